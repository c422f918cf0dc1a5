"""The sweep's pruned-model evaluations, run in a second process while this one selects heads.

On two cores one process that alternates between choosing heads (scans, gradients, Candidate Filtering) and
evaluating the chosen model leaves a core idle much of the time (matrix products of this size split poorly
over two threads). `Evaluations` sends each run's pruned heads to a worker process with its own copy of the
model (loaded from the same folder and checked to hold the same parameters, byte for byte) and its own
tokenized evaluation split, one thread each. Results are the same numbers an in-process evaluation gives
(same inputs, same batches, same operations; the thread count does not change CPU results here), so the
worker is a pure speed-up: where it cannot start, where the model was not loaded from a folder, or where it
fails, evaluations run in this process instead.

Every removed set is evaluated once per sweep (two runs that prune the same heads share it).
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any, Sequence

from .progress import log

Head = tuple[int, int]
_WORKER: dict[str, Any] = {}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _init(path: str, splits: dict, batch_size: int, max_length: int, metric_names: Sequence[str]) -> None:
    import torch

    from .evaluate import prepare
    from .models import load_model
    from .progress import set_quiet

    torch.set_num_threads(1)
    set_quiet(True)
    tm = load_model(path)
    _WORKER.update(tm=tm, metric_names=tuple(metric_names),
                   prepared={s: prepare(tm, ex, batch_size=batch_size, max_length=max_length) for s, ex in splits.items()})


def _fingerprint() -> str:
    from .evalcache import model_fingerprint

    return model_fingerprint(_WORKER["tm"].model)


def _evaluate(pruned: list[Head]) -> tuple[dict, float]:
    from .pipeline import evaluate_heads

    t0 = time.perf_counter()
    scores = evaluate_heads(_WORKER["tm"], _WORKER["prepared"], _WORKER["metric_names"], pruned)
    return scores, time.perf_counter() - t0


class Evaluations:
    """`submit(pruned)` as soon as a run has chosen its heads; `result(pruned)` when its numbers are needed."""

    def __init__(self, tm, prepared: dict, splits: dict, metric_names: Sequence[str], batch_size: int,
                 max_length: int, worker: bool | None = None):
        self.tm, self.prepared, self.metric_names = tm, prepared, tuple(metric_names)
        self._jobs: dict[frozenset, Any] = {}
        self._done: dict[frozenset, dict] = {}
        self._seconds: dict[frozenset, float] = {}
        self.worker_seconds = 0.0  # time the worker spent evaluating
        self.local_seconds = 0.0  # time this process spent evaluating
        self._pool: cf.ProcessPoolExecutor | None = None
        self._checked: cf.Future | None = None
        path = Path(tm.path) if getattr(tm, "path", "") else None
        if worker is None:
            worker = _cores() >= 2 and path is not None and path.is_dir()
        if worker and path is not None:
            try:
                self._pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_init,
                                                    initargs=(str(path), splits, batch_size, max_length, self.metric_names))
                self._checked = self._pool.submit(_fingerprint)
            except (OSError, RuntimeError) as e:  # no processes here: evaluate in this process
                log(f"evaluation worker not started ({e}); evaluating in this process")
                self._pool = None

    @property
    def parallel(self) -> bool:
        return self._pool is not None

    def pace(self, threads: int) -> None:
        """Torch threads for this process: one core fewer while the worker has evaluations to do, all
        `threads` once it is idle (call it between passes; it only ever changes the calling thread's count)."""
        import torch

        busy = self._pool is not None and any(not job.done() for job in self._jobs.values())
        want = max(1, threads - 1) if busy else threads
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)

    def submit(self, pruned: Sequence[Head]) -> None:
        key = frozenset(map(tuple, pruned))
        if key in self._jobs or key in self._done:
            return
        if self._pool is not None:
            self._jobs[key] = self._pool.submit(_evaluate, sorted(key))
        else:
            self._done[key] = self._local(key)

    def steal(self) -> bool:
        """Evaluate here the most recently submitted evaluation the worker has not started (this process has
        nothing else to do); False if there is none."""
        for key in reversed(list(self._jobs)):
            if self._jobs[key].cancel():
                del self._jobs[key]
                self._done[key] = self._local(key)
                return True
        return False

    def ready(self, pruned: Sequence[Head]) -> bool:
        """Whether `result(pruned)` would return without waiting."""
        key = frozenset(map(tuple, pruned))
        return key in self._done or (key in self._jobs and self._jobs[key].done())

    def seconds(self, pruned: Sequence[Head]) -> float:
        """How long the evaluation of `pruned` took (in whichever process ran it; 0 before it is in)."""
        return self._seconds.get(frozenset(map(tuple, pruned)), 0.0)

    def result(self, pruned: Sequence[Head]) -> dict:
        key = frozenset(map(tuple, pruned))
        self.submit(key)
        if key not in self._done:
            job = self._jobs.pop(key)
            try:
                self._check()
                scores, seconds = job.result()
                self.worker_seconds += seconds
                self._seconds[key] = seconds
                self._done[key] = scores
            except Exception as e:  # a worker that died or differs: this process does the rest
                self._fallback(e)
                self._done[key] = self._local(key)
        return self._done[key]

    def _local(self, key: frozenset) -> dict:
        from .pipeline import evaluate_heads

        t0 = time.perf_counter()
        scores = evaluate_heads(self.tm, self.prepared, self.metric_names, sorted(key))
        self._seconds[key] = time.perf_counter() - t0
        self.local_seconds += self._seconds[key]
        return scores

    def _check(self) -> None:
        if self._checked is not None:
            from .evalcache import model_fingerprint

            theirs, self._checked = self._checked.result(), None
            if theirs != model_fingerprint(self.tm.model):
                raise RuntimeError("the worker's model differs from this one")

    def _fallback(self, error: Exception) -> None:
        if self._pool is not None:
            log(f"evaluation worker failed ({error}); evaluating in this process")
            self.close()
        self._jobs.clear()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "Evaluations":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
