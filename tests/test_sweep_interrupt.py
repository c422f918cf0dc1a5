"""`synprune sweep` at its start and its end: it prints its expected time from the work it has planned; Ctrl-C
prints no traceback (from this process or the evaluation worker), one line with the runs kept and the command
that resumes; the rerun says how many runs it read back and how many remain."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from synprune.cli import main
from synprune.run.result import PruneResult

SRC = os.path.join(os.path.dirname(__file__), "..", "src")


def _args(model, glue_dir, out, methods="magnitude,random", seeds="0,1"):
    return ["sweep", "--model", str(model), "--glue-dir", str(glue_dir), "--methods", methods, "--sparsities",
            "0.25,0.5", "--seeds", seeds, "--calib-size", "4", "--out", str(out), "--no-report"]


def test_ctrl_c_prints_one_line_with_the_runs_kept_and_the_resume_command(monkeypatch, capsys, tmp_path, tiny_folder,
                                                                          glue_dir):
    real = PruneResult.write
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C once two runs are written
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PruneResult, "write", interrupted)
    args = _args(tiny_folder, glue_dir, tmp_path / "sweep")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    assert exc.value.code == 130
    assert "Traceback" not in captured.err + captured.out
    line = [line for line in captured.err.splitlines() if line.strip()][-1]
    kept = sorted((tmp_path / "sweep" / "runs").glob("*/result.json"))
    assert line.startswith(f"interrupted: {len(kept)} of 6 runs finished") and len(kept) == 2, captured.err
    command = line.split("resume with: ", 1)[1]
    assert shlex.split(command) == ["synprune", *args]
    assert re.search(r"sweep: expected \d+ (s|min) to \d+ (s|min) \(7 evaluations;", " ".join(captured.err.split()))

    monkeypatch.setattr(PruneResult, "write", real)
    with pytest.raises(SystemExit) as rerun:
        main(shlex.split(command)[1:])
    assert rerun.value.code in (0, None)
    out = capsys.readouterr().err
    assert re.search(r"read back 2 finished runs from \S+, 4 remain", " ".join(out.split())), out
    assert len(list((tmp_path / "sweep" / "runs").glob("*/result.json"))) == 6


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs process groups (POSIX)")
def test_sigint_to_a_sweep_and_its_worker_prints_no_traceback(tmp_path, tiny_folder, glue_dir):
    """A real Ctrl-C: SIGINT to the process group (this process and the evaluation worker) once a run is written."""
    out = tmp_path / "sweep"
    args = _args(tiny_folder, glue_dir, out, methods="random,magnitude", seeds=",".join(map(str, range(150))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "synprune", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True,
                            # a test run launched in the background inherits SIGINT ignored, and so would the sweep
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not any((out / "runs").glob("*/result.json")):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr + stdout and "KeyboardInterrupt" not in stderr, stderr
    line = [l for l in stderr.splitlines() if l.strip()][-1]
    finished = int(re.search(r"interrupted: (\d+) of 302 runs finished", line).group(1))
    assert finished == len(list((out / "runs").glob("*/result.json"))) >= 1
    assert "resume with: synprune sweep" in line


def test_the_evaluation_worker_ignores_ctrl_c():
    """The terminal sends SIGINT to the worker too: it must leave stopping (and the one line) to the sweep."""
    from synprune.run import evalpool

    pool = evalpool._pool()
    try:
        assert pool.submit(signal.getsignal, signal.SIGINT).result(timeout=120) == signal.SIG_IGN
    finally:
        evalpool._kill(pool)
        pool.shutdown(wait=False, cancel_futures=True)


def test_expected_time_counts_the_planned_work(monkeypatch):
    """The estimate: (evaluations x a dense pass + CF passes x their share of one) / processes, as a range."""
    from conftest import tiny_model
    from synprune.config import PruneConfig
    from synprune.run import sweep as S

    monkeypatch.setattr(S, "dense_pass_seconds", lambda tm, prepared: 10.0)
    tm = tiny_model("bert")  # 12 heads
    prepared = {"dev": type("P", (), {"n": 100})()}
    plain = [PruneConfig(method="magnitude", sparsity=s).resolved() for s in (0.25, 0.5, 0.75)]
    line = S.expected_time(tm, prepared, plain, 50, parallel=True)
    central = S.ETA_FACTOR * 4 * 10.0 / 2
    low, high = (S._minutes(central * f) for f in S.ETA_RANGE)
    assert line.startswith(f"sweep: expected {low} to {high} (4 evaluations;"), line
    cf = plain + [PruneConfig(method="sap", cf=True, sparsity=s).resolved() for s in (0.25, 0.5)]
    line = S.expected_time(tm, prepared, cf, 50, parallel=False)
    assert "6 evaluations and about 18 Candidate Filtering passes" in line, line  # 9 alone + sap's largest pool of 9
    central = S.ETA_FACTOR * (6 * 10.0 + 18 * S.CF_PASS_SHARE * 10.0 * 50 / 100)
    assert line.startswith(f"sweep: expected {S._minutes(central * S.ETA_RANGE[0])} to "), line
