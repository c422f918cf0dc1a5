"""A sweep's runs computed as jobs of their own (`run/executors.py`): the same results as the default two-process
pool, written into the same folder and report, resumed the same way. Ray is optional and its local start-up
(10-40 s here) too slow for the suite: benchmarks/ray_sweep.py runs a sweep on a local Ray instance."""
from __future__ import annotations

import concurrent.futures
import importlib.util
import json

import pytest

from conftest import tiny_model, write_stsb

from synprune.errors import SynpruneError
from synprune.run import executors as X
from synprune.run.sweep import sweep

execute_original = X.execute
RUNS = dict(task="stsb", methods=["magnitude", "random"], sparsities=[0.25, 0.5], seeds=[0], calib_size=6, report=False)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exec_bert")
    tm = tiny_model("bert")
    tm.model.save_pretrained(tmp / "bert")
    tm.tokenizer.save_pretrained(tmp / "bert")
    return str(tmp / "bert"), write_stsb(tmp / "glue")


def _picked(result) -> dict:
    return {name: (r.pruned_heads, r.metric["dense"], r.metric["pruned"]) for name, r in result.results.items()}


class Reversed:
    """A fake distributed executor: holds every job and runs them in reverse order, on another thread, once the
    first result is asked for (as a cluster's jobs finish in any order)."""

    def __init__(self):
        self.specs, self.futures, self.closed = [], [], False

    def submit(self, spec):
        future = concurrent.futures.Future()
        self.specs.append(spec)
        self.futures.append(future)
        if len(self.specs) == 1:
            import threading

            def later():
                import time

                time.sleep(0.2)  # every run is submitted by then
                for s, f in reversed(list(zip(self.specs, self.futures))):
                    f.set_result(X.execute(s))

            threading.Thread(target=later, daemon=True).start()
        return future

    def close(self):
        self.closed = True


def test_jobs_match_the_pool_in_any_order_and_resume_reads_finished_runs(bert, tmp_path, monkeypatch):
    model, glue = bert
    pool = sweep(model, glue_dir=glue, out=tmp_path / "pool", **RUNS)
    fake = Reversed()
    jobs = sweep(model, glue_dir=glue, out=tmp_path / "jobs", executor=fake, **RUNS)
    assert _picked(jobs) == _picked(pool)
    assert [r["run"] for r in jobs.rows] == [r["run"] for r in pool.rows]  # plan order, not completion order
    assert not fake.closed and len(fake.specs) == 4 and all(s.model == model for s in fake.specs)
    on_disk = json.loads((tmp_path / "jobs" / "results.json").read_text())
    assert [r["pruned"] for r in on_disk["rows"]] == [r["pruned"] for r in pool.rows]
    # resume: one run's result is gone; only that run is computed again
    gone = tmp_path / "jobs" / jobs.rows[1]["run"] / "result.json"
    gone.unlink()
    ran = []
    monkeypatch.setattr(X, "execute", lambda spec: ran.append(spec.name) or execute_original(spec))
    again = sweep(model, glue_dir=glue, out=tmp_path / "jobs", executor="inline", **RUNS)
    assert ran == [jobs.rows[1]["run"].split("/")[-1]] and gone.is_file()
    assert len(again.summary["reused_runs"]) == 3 and _picked(again) == _picked(pool)


def test_a_job_that_read_other_weights_is_refused(bert, tmp_path, monkeypatch):
    model, glue = bert

    def other_weights(spec):
        got = execute_original(spec)
        got["result"]["model"]["weights_sha256"] = "0" * 64
        return got

    monkeypatch.setattr(X, "execute", other_weights)
    with pytest.raises(SynpruneError, match="read another model"):
        sweep(model, glue_dir=glue, out=tmp_path / "s", executor="inline", **{**RUNS, "methods": ["magnitude"]})


def test_executor_option_errors(bert, monkeypatch):
    model, glue = bert
    with pytest.raises(SynpruneError, match="--executor dask: use pool, inline, ray"):
        X.check_executor("dask")
    with pytest.raises(SynpruneError, match="--executor ray:"):
        X.check_executor("ray:")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(SynpruneError, match=r"needs Ray, which is not installed: `pip install 'synprune\[ray\]'`"):
        sweep(model, glue_dir=glue, out=None, executor="ray", **RUNS)
    monkeypatch.undo()
    with pytest.raises(SynpruneError, match="pass them by name or path"):
        sweep(tiny_model("bert").model, tiny_model("bert").tokenizer, glue_dir=glue, out=None, executor="inline", **RUNS)

