"""The sweep's evaluation worker gives the numbers an in-process evaluation gives, shares repeated removed
sets, and falls back to this process when its model is not this one."""
import time
from pathlib import Path

import pytest

import synprune.evaluation.evalcache
import synprune.run.evalpool as EP
from synprune.evaluation.evaluate import prepare
from synprune.model.load import load_model
from synprune.run.prune import evaluate_heads
from synprune.run.sweep import sweep
from synprune.data.tasks import Example

from conftest import STSB_ROWS
from test_cf import one_thread  # noqa: F401 (autouse: both processes evaluate on one thread, as in a sweep whose
# worker is busy; 1 and 2 threads give different last digits)

SETS = [[], [(0, 1), (2, 3)], [(1, 0)], [(2, 3), (0, 1)]]  # the 4th is the 2nd in another order


def _setup(folder):
    tm = load_model(str(folder))
    splits = {"validation": [Example(a, b, s) for a, b, s in STSB_ROWS]}
    prepared = {s: prepare(tm, ex, batch_size=4) for s, ex in splits.items()}
    return tm, splits, prepared


def test_each_removed_set_is_evaluated_once(tiny_folder):
    tm, splits, prepared = _setup(tiny_folder)
    with EP.Evaluations(tm, prepared, splits, ["pearson", "spearman"], 4, 128, worker=False) as evals:
        assert not evals.parallel
        got = [evals.result(s) for s in SETS]
        assert evals.evaluated == 3  # the reordered set was evaluated once
    for s, scores in zip(SETS, got):
        assert scores == evaluate_heads(tm, prepared, ["pearson", "spearman"], s)


def test_a_worker_whose_model_differs_is_dropped(tiny_folder, monkeypatch):
    tm, splits, prepared = _setup(tiny_folder)
    monkeypatch.setattr(synprune.evaluation.evalcache, "model_fingerprint", lambda model: "not the worker's")
    with EP.Evaluations(tm, prepared, splits, ["pearson"], 4, 128, worker=True) as evals:
        for s in SETS[:2]:
            evals.submit(s)
        for _ in range(600):  # the worker's check comes back before it is given any job
            if not evals.parallel:
                break
            time.sleep(0.1)
        got = [evals.result(s) for s in SETS[:2]]
        assert not evals.parallel and evals.local_seconds > 0 and evals.worker_seconds == 0
    assert got == [evaluate_heads(tm, prepared, ["pearson"], s) for s in SETS[:2]]


def test_sweep_results_do_not_depend_on_the_worker(tiny_folder, glue_dir, monkeypatch):
    rows = {}
    steal = EP.Evaluations.steal
    monkeypatch.setattr(EP.Evaluations, "steal", lambda self: not self.parallel and steal(self))  # the worker does all
    for cores in (2, 1):
        monkeypatch.setattr(EP, "_cores", lambda: cores)
        res = sweep(str(tiny_folder), task="stsb", glue_dir=glue_dir, methods=["magnitude", "random", "magnitude+cf"],
                    sparsities=[0.25, 0.5], seeds=[0, 1], out=None, calib_size=6)
        worker = res.summary["timings"].get("worker_stages", {})
        assert set(worker) == ({"cf", "evaluate_pruned"} if cores == 2 else set())  # CF walks made there too
        if cores == 2:  # the job timeline accounts for every second the worker's stages add up to
            jobs = [j for j in res.summary["timings"]["jobs"] if j["who"] == "worker"]
            for stage, seconds in worker.items():
                assert sum(j["seconds"] for j in jobs if j["stage"] == stage) == pytest.approx(seconds, abs=0.01)
        rows[cores] = [{k: v for k, v in row.items() if k != "seconds"} for row in res.rows]
    assert rows[1] == rows[2]
    assert [(r["method"], r["cf"], r["sparsity"], r["seed"]) for r in rows[2]] == [  # plan order, CF chosen last
        ("magnitude", False, 0.25, 0), ("magnitude", False, 0.5, 0), ("random", False, 0.25, 0), ("random", False, 0.5, 0),
        ("random", False, 0.25, 1), ("random", False, 0.5, 1), ("magnitude", True, 0.25, 0), ("magnitude", True, 0.5, 0)]


def test_this_process_takes_evaluations_the_worker_has_not_started(tiny_folder):
    tm, splits, prepared = _setup(tiny_folder)
    sets = [[(l, h)] for l in range(3) for h in range(4)]
    with EP.Evaluations(tm, prepared, splits, ["pearson"], 4, 128, worker=True) as evals:
        for s in sets:
            evals.submit(s)
        stolen = 0
        while evals.steal():
            stolen += 1
        got = [evals.result(s) for s in sets]
        assert stolen > 0 and evals.local_seconds > 0 and evals.parallel
    assert got == [evaluate_heads(tm, prepared, ["pearson"], s) for s in sets]


def test_a_prestarted_worker_is_taken_and_an_untaken_one_ended(tiny_folder, monkeypatch):
    """`prestart` spawns the worker ahead (its imports overlap the parent's start-up); the next Evaluations takes
    that process and its numbers are an in-process evaluation's; one nobody takes is ended at once."""
    monkeypatch.setattr(EP, "_cores", lambda: 2)
    tm, splits, prepared = _setup(tiny_folder)
    EP.prestart()
    early = EP._EARLY[0]
    with EP.Evaluations(tm, prepared, splits, ["pearson"], 4, 128, worker=True) as evals:
        assert evals._pool is early and not EP._EARLY
        for s in SETS[1:3]:
            evals.submit(s)
        for _ in range(600):  # this process takes nothing: the worker must do a job
            if evals.worker_seconds:
                break
            evals.wait(0.1)
        assert evals.worker_seconds > 0
        got = [evals.result(s) for s in SETS[1:3]]
    assert got == [evaluate_heads(tm, prepared, ["pearson"], s) for s in SETS[1:3]]
    EP.prestart()
    processes = list(EP._EARLY[0]._processes.values())
    t0 = time.perf_counter()
    EP.release_early()  # while it is still importing (seconds): not waited for
    for p in processes:
        p.join(10)
    assert not EP._EARLY and time.perf_counter() - t0 < 3
    assert not any(p.is_alive() and _running(p.pid) for p in processes)  # (the pool's own thread may reap it)


def _running(pid: int) -> bool:
    """Whether the OS still runs `pid` (a zombie or a reaped process does not count)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status
