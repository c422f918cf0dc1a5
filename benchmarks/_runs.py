"""Shared by the SAP open-check benchmarks: run-level resume on one calibration context per task model.

A benchmark lists its runs (a PruneConfig and a folder each). Each run's result.json is written atomically
as it finishes, so a benchmark stopped by its time budget (or killed) resumes where it stopped: finished runs
are read back, and the task model, parses, attention statistics, gradients and CF's single-head ablations are
computed only if some run of that task is still missing (and then once, shared by all its runs, as in a sweep).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable

from synprune.config import PruneConfig

TASKS = ("sst2", "cola", "mrpc", "stsb")


class Deadline:
    """Stop starting new runs after `minutes` (None: no limit)."""

    def __init__(self, minutes: float | None):
        self.end = None if minutes is None else time.monotonic() + 60 * minutes

    @property
    def passed(self) -> bool:
        return self.end is not None and time.monotonic() > self.end


@dataclass
class TaskRuns:
    """The runs of one task model, sharing one calibration context (built on first need)."""

    task: str
    base: PruneConfig = field(default_factory=PruneConfig)
    glue_dir: str | None = None
    ran: int = 0
    read: int = 0
    skipped: list[str] = field(default_factory=list)

    @cached_property
    def context(self):
        from synprune.calibrate.context import Calibration
        from synprune.evaluation.evaluate import task_metrics
        from synprune.model.load import as_task_model
        from synprune.run.sweep import task_model_for
        from synprune.data.tasks import load_task, make_split

        tm = as_task_model(task_model_for(self.task, self.glue_dir))
        data = load_task(self.task, self.glue_dir)
        split = make_split(data, self.base.calib_size, self.base.seed, self.base.eval_size)
        ctx = Calibration(tm, split.calibration, self.base, task_metrics(tm, data), glue_dir=self.glue_dir)
        return ctx, data, split

    def result(self, folder: Path, deadline: Deadline, **options) -> dict | None:
        """The run's result.json, read back or computed now; None if the deadline passed before it started."""
        path = folder / "result.json"
        if path.is_file():
            self.read += 1
            return json.loads(path.read_text())
        if deadline.passed:
            self.skipped.append(str(folder))
            return None
        from synprune.run.prune import run

        ctx, data, split = self.context
        t0 = time.perf_counter()
        res = run(ctx, self.base.replace(**options).validate(), data, split, folder)
        self.ran += 1
        print(f"  {self.task} {folder.name}: {res.metric['pruned']:.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return res.to_json()


def label(result: dict) -> str:
    return result["method"] + ("+cf" if result["cf"] else "")


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    import numpy as np

    v = np.asarray(list(values), dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
