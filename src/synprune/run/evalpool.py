"""The sweep's jobs besides scoring methods, shared between this process and a second one (the worker).

On two cores one process that alternates between choosing heads and evaluating leaves a core idle much of the
time (matrix products of this size split poorly over two threads). `Evaluations` keeps a queue of jobs: the
evaluation of a removed set (`submit`) and Candidate Filtering's passes (`cf`: heads scored alone, or one run's
whole greedy walk, `synprune.cf.filter`). Two processes take them in priority order: a worker process with its own copy
of the model (loaded from the same folder and checked to hold the same parameters, byte for byte), its own
tokenized evaluation split and calibration sample, one thread; and this process whenever it has nothing else to
do (`steal`). A thread here hands the worker its next job as soon as it finishes one, so the worker never waits
for this process. A job's numbers are the ones it gives in this process (same inputs, same batches, same
operations; the thread count does not change CPU results here), so the worker is a pure speed-up: where it
cannot start, where the model was not loaded from a folder, or where it fails, its jobs run in this process.

A CF job on the worker starts from this process's table of known metrics (`cf.metric_table`) and sends back
what it added. Every removed set is evaluated once per sweep (two runs that prune the same heads share it).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from synprune.progress import log

Head = tuple[int, int]
_WORKER: dict[str, Any] = {}
STAGES = {"evaluate": "evaluate_pruned", "cf": "cf"}  # a job's stage in the sweep's breakdown


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _init(path: str, splits: dict, batch_size: int, max_length: int, metric_names: Sequence[str],
          calibration: tuple | None = None, windowing: dict | None = None) -> None:
    import torch

    from synprune.evaluation.evaluate import prepare
    from synprune.model.load import load_model
    from synprune.progress import set_quiet

    torch.set_num_threads(1)
    set_quiet(True)
    tm = load_model(path)
    _WORKER.update(tm=tm, metric_names=tuple(metric_names),
                   prepared={s: prepare(tm, ex, batch_size=batch_size, max_length=max_length,
                                        windowing=(windowing or {}).get(s)) for s, ex in splits.items()},
                   calibration=_calibration(tm, calibration, metric_names))


def _ignore_interrupt() -> None:
    """The worker ignores Ctrl-C (the terminal sends it to both processes): this process stops the sweep, says
    so in one line and ends the worker."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


# A worker killed on Ctrl-C leaves a semaphore that multiprocessing's resource tracker removes at exit, with a
# "leaked semaphore" warning after the sweep's one line. The tracker takes its warning options from this process
# when it starts (with the first pool), so it is told to skip that one warning.
_QUIET_TRACKER = "ignore:resource_tracker:UserWarning"


def _pool() -> cf.ProcessPoolExecutor:
    import sys

    if _QUIET_TRACKER not in sys.warnoptions:
        sys.warnoptions.append(_QUIET_TRACKER)
    return cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_ignore_interrupt)


def _kill(pool: cf.ProcessPoolExecutor) -> None:
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()  # SIGKILL cannot be blocked; the worker holds nothing that needs cleaning up


_EARLY: list[cf.ProcessPoolExecutor] = []  # a worker process started ahead (`prestart`), for the next Evaluations


def _warm() -> None:
    """A fresh process spends seconds importing torch and transformers' model code: done while the parent starts."""
    import importlib

    for name in ("torch", "transformers.modeling_utils", f"{__package__}.cf", f"{__package__}.models"):
        importlib.import_module(name)


def prestart() -> None:
    """Start the evaluation worker's process now, so that its imports overlap this process's own start-up (model
    loading, data, parsing); the next `Evaluations` takes it, and `release_early` ends it if none does."""
    if _cores() >= 2 and not _EARLY:
        try:
            pool = _pool()
            pool.submit(_warm)
        except (OSError, RuntimeError):  # no processes here: Evaluations will say so and evaluate in this process
            return
        _EARLY.append(pool)


def release_early() -> None:
    """End a prestarted worker that no `Evaluations` took (e.g. the sweep stopped on bad input) without waiting."""
    while _EARLY:
        pool = _EARLY.pop()
        _kill(pool)  # it only imports
        pool.shutdown(wait=False, cancel_futures=True)


def worker_possible(tm) -> bool:
    """Whether `Evaluations` will start a worker process: two cores or more, and a model loaded from a folder."""
    path = Path(tm.path) if getattr(tm, "path", "") else None
    return _cores() >= 2 and path is not None and path.is_dir()


def _calibration(tm, calibration: tuple | None, metric_names: Sequence[str]) -> Callable[[], Any]:
    """The calibration context CF jobs run on, built on first use from (examples, config) as the sweep builds its own."""
    context: list = []

    def get():
        if not context:
            from synprune.calibrate.context import Calibration

            examples, config = calibration
            context.append(Calibration(tm, examples, config, metric_names))
        return context[0]

    return get


def _fingerprint() -> str:
    from synprune.evaluation.evalcache import model_fingerprint

    return model_fingerprint(_WORKER["tm"].model)


def _evaluate(state: dict, pruned: list[Head]) -> dict:
    from synprune.run.prune import evaluate_heads

    return evaluate_heads(state["tm"], state["prepared"], state["metric_names"], pruned)


def _cf(state: dict, kind: str, args: tuple, known: dict) -> tuple[Any, dict]:
    """`cf.score_alone(ctx, *args)` ("alone") or `cf.candidate_filter(ctx, *args)` ("walk") on the calibration
    context, its table first given the `known` metrics; returns the outcome and the metrics the job added."""
    from synprune.cf import filter as CF

    ctx = state["calibration"]()
    table = CF.metric_table(ctx)
    table.update(known)
    seen = set(table)
    out = CF.score_alone(ctx, *args) if kind == "alone" else CF.candidate_filter(ctx, *args)
    return out, {k: v for k, v in table.items() if k not in seen}


_JOBS = {"evaluate": _evaluate, "cf": _cf}



def _run(fn: str, args: tuple, state: dict | None = None) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = _JOBS[fn](_WORKER if state is None else state, *args)
    return out, time.perf_counter() - t0


@dataclass(eq=False)
class Job:
    """One unit of work: `fn` (a key of `_JOBS`) on `args`; taken in `rank` order once `after` is done."""

    fn: str
    args: tuple
    rank: tuple
    after: "Job | None" = None
    state: str = "pending"  # pending -> running (here or at the worker) -> done
    out: Any = None
    seconds: float = 0.0

    @property
    def done(self) -> bool:
        return self.state == "done"


class Evaluations:
    """`submit(pruned)` as soon as a run has chosen its heads, `result(pruned)` when its numbers are needed;
    `cf(...)` for Candidate Filtering's jobs. `steal()` runs the first pending job here; `wait()` sleeps until
    a job is done."""

    def __init__(self, tm, prepared: dict, splits: dict, metric_names: Sequence[str], batch_size: int,
                 max_length: int, worker: bool | None = None, calibration: tuple | None = None, cf_context=None,
                 timed: Callable[[str], Any] | None = None):
        import torch

        self.metric_names = tuple(metric_names)
        self.threads = torch.get_num_threads()
        self._here = {"tm": tm, "prepared": prepared, "metric_names": self.metric_names,
                      "calibration": lambda: cf_context}
        self._timed = timed or (lambda stage: contextlib.nullcontext())
        self.table: dict = {}  # CF's known metrics, sent to the worker's CF jobs
        if cf_context is not None:
            from synprune.cf.filter import metric_table

            self.table = metric_table(cf_context)
        self._evals: dict[frozenset, Job] = {}
        self._pending: list[Job] = []
        self._cond = threading.Condition()
        self._order = itertools.count()
        self._at_worker: Job | None = None
        self._closing = False
        self.worker_seconds = 0.0  # time the worker spent on jobs
        self.worker_stages: dict[str, float] = {}
        self.local_seconds = 0.0  # time this process spent on jobs
        self.t0 = time.perf_counter()
        self.timeline: list[dict] = []  # one entry per job run: who, stage, what, start and seconds (since t0)
        self._pool: cf.ProcessPoolExecutor | None = None
        self._feeder: threading.Thread | None = None
        path = Path(tm.path) if getattr(tm, "path", "") else None
        if worker is None:
            worker = worker_possible(tm)
        if worker and path is not None:
            try:  # one process runs its jobs in order: _init first
                pool = _EARLY.pop() if _EARLY else _pool()
                windowing = {s: p.windowing for s, p in prepared.items()}  # a causal LM's token windows, as here
                pool.submit(_init, str(path), splits, batch_size, max_length, self.metric_names, calibration, windowing)
                checked = pool.submit(_fingerprint)
                self._pool = pool
            except (OSError, RuntimeError) as e:  # no processes here: everything runs in this process
                log(f"evaluation worker not started ({e}); evaluating in this process")
                self._pool = None
            else:
                self._feeder = threading.Thread(target=self._feed, args=(checked,), daemon=True)
                self._feeder.start()

    @property
    def parallel(self) -> bool:
        return self._pool is not None

    @property
    def evaluated(self) -> int:
        """Distinct removed sets evaluated or queued."""
        return len(self._evals)

    def pace(self, threads: int | None = None) -> None:
        """Torch threads for this process: one core fewer while the worker has a job or is about to take one,
        all `threads` (default: the count at start) once it has none (call it between passes; it only ever
        changes the calling thread's count)."""
        import torch

        threads = threads or self.threads
        with self._cond:
            busy = self._at_worker is not None or (self._pool is not None and any(
                j.after is None or j.after.done for j in self._pending))
        want = max(1, threads - 1) if busy else threads
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)

    def submit(self, pruned: Sequence[Head], first: bool = False) -> None:
        """Queue the evaluation of `pruned` after every CF job (`first`: before every job); among evaluations the
        costliest (fewest heads removed) first, so that the last jobs, which one process may wait on, are short."""
        key = frozenset(map(tuple, pruned))
        if key not in self._evals:
            self._evals[key] = self._add("evaluate", (sorted(key),), (0,) if first else (2, len(key)))

    def cf(self, kind: str, args: tuple, rank: tuple = (), after: Job | None = None) -> Job:
        """A CF job (`_cf`): "alone" with (heads, cfg) or "walk" with (order, n_prune, cfg); ranked before
        every evaluation, by `rank` among CF jobs."""
        return self._add("cf", (kind, args), (1, *rank), after)

    def _add(self, fn: str, args: tuple, rank: tuple, after: Job | None = None) -> Job:
        job = Job(fn, args, (*rank, next(self._order)), after)
        with self._cond:
            self._pending.append(job)
            self._cond.notify_all()
        if self._pool is None:  # one process: do it now, as a sequential sweep would
            self.outcome(job)
        return job

    def _take(self) -> Job | None:
        """The first pending job whose predecessor is done (call with the lock held)."""
        ready = [j for j in self._pending if j.after is None or j.after.done]
        if not ready:
            return None
        job = min(ready, key=lambda j: j.rank)
        self._pending.remove(job)
        job.state = "running"
        return job

    def steal(self) -> bool:
        """Run the first pending job in this process (it has nothing else to do); False if there is none."""
        with self._cond:
            job = self._take()
        if job is None:
            return False
        self._local(job)
        return True

    def wait(self, timeout: float = 1.0) -> None:
        """Sleep until a job is done (or `timeout` seconds)."""
        with self._cond:
            self._cond.wait(timeout)

    def ready(self, pruned: Sequence[Head]) -> bool:
        """Whether `result(pruned)` would return without waiting."""
        job = self._evals.get(frozenset(map(tuple, pruned)))
        return job is not None and job.done

    def seconds(self, pruned: Sequence[Head]) -> float:
        """How long the evaluation of `pruned` took (in whichever process ran it; 0 before it is in)."""
        job = self._evals.get(frozenset(map(tuple, pruned)))
        return job.seconds if job is not None else 0.0

    def result(self, pruned: Sequence[Head]) -> dict:
        self.submit(pruned)
        return self.outcome(self._evals[frozenset(map(tuple, pruned))])

    def outcome(self, job: Job) -> Any:
        """The job's outcome: run here if no process has started it, else waited for."""
        while True:
            with self._cond:
                if job.done:
                    return job.out
                mine = job.state == "pending"
                if mine:
                    self._pending.remove(job)
                    job.state = "running"
                else:
                    self._cond.wait(1.0)
            if mine:
                self._local(job)

    def _local(self, job: Job) -> None:
        args = (*job.args, {}) if job.fn == "cf" else job.args  # this process's table is the shared one
        self.pace()
        start = time.perf_counter()
        with self._timed(STAGES[job.fn]):
            out, seconds = _run(job.fn, args, self._here)
        self.local_seconds += seconds
        self._record("main", job, start, seconds)
        with self._cond:
            job.out = out[0] if job.fn == "cf" else out
            job.seconds, job.state = seconds, "done"
            self._cond.notify_all()

    def _feed(self, checked: cf.Future) -> None:
        """The worker's next job, each time it is free, until closed; on a failure its jobs come back here."""
        from synprune.evaluation.evalcache import model_fingerprint

        try:
            if checked.result() != model_fingerprint(self._here["tm"].model):
                raise RuntimeError("the worker's model differs from this one")
            while True:
                with self._cond:
                    job = None
                    while not self._closing and (job := self._take()) is None:
                        self._cond.wait()
                    if job is None:
                        return
                    self._at_worker = job
                    args = (*job.args, dict(self.table)) if job.fn == "cf" else job.args
                try:
                    start = time.perf_counter()
                    out, seconds = self._pool.submit(_run, job.fn, args).result()
                except BaseException:
                    with self._cond:
                        job.state, self._at_worker = "pending", None
                        self._pending.append(job)
                    raise
                with self._cond:
                    if job.fn == "cf":
                        out, added = out
                        self.table.update(added)
                    job.out, job.seconds, job.state = out, seconds, "done"
                    self._at_worker = None
                    self.worker_seconds += seconds
                    stage = STAGES[job.fn]
                    self.worker_stages[stage] = self.worker_stages.get(stage, 0.0) + seconds
                    self._record("worker", job, start, seconds)
                    self._cond.notify_all()
        except Exception as e:  # a worker that died or differs: this process does the rest
            if not self._closing:
                log(f"evaluation worker failed ({e}); evaluating in this process")
            self._shutdown()

    def _record(self, who: str, job: Job, start: float, seconds: float) -> None:
        """Add a job to the timeline (`start`: when it was handed out; `seconds`: its own run time)."""
        if job.fn == "evaluate":
            what = f"{len(job.args[0])} heads removed"
        else:  # ("alone", (heads of one layer, cfg)) or ("walk", (order, n_prune, cfg))
            kind, args = job.args
            what = f"alone layer {args[0][0][0]}" if kind == "alone" else f"walk n={args[1]}"
        self.timeline.append({"who": who, "stage": STAGES[job.fn], "what": what,
                              "start": round(start - self.t0, 3), "seconds": round(seconds, 3)})

    def _shutdown(self, kill: bool = False) -> None:
        with self._cond:
            pool, self._pool = self._pool, None
            self._closing = True
            self._cond.notify_all()
        if pool is not None:
            if kill:  # its job's result is no longer wanted: do not wait for it
                _kill(pool)
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self, kill: bool = False) -> None:
        self._shutdown(kill)

    def __enter__(self) -> "Evaluations":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(kill=exc_type is not None)
