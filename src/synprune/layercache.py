"""Score head ablations on calibration data, re-running only the layers an ablation changes.

Removing heads of layer l cannot change what enters layer l, so `AblationScorer` keeps, for every model call
of a calibration pass, the output of the layer before each layer it will be asked to ablate (computed with
the currently accepted heads removed). An ablation starting at layer l then skips layers 0..l-1: their
`forward` is swapped, for that pass only, for one that returns the cached output, and the model does the
rest as usual (embeddings, attention-mask building, layers l..L-1, pooling or classifier, metric). This
works for any encoder whose layers (from `synprune.arch`) run once each, in order, per model call; a model
where that check fails is scored with full forward passes instead.

Memory: one hidden-state tensor per model call and per cached layer, i.e. about
calibration examples x tokens x hidden size x 4 bytes per layer (x 2 for sentence-pair embedding models).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Collection, Iterable, Iterator

from torch import nn

from .arch import get_adapter
from .evaluate import Prepared, evaluate
from .masking import HeadMask
from .models import TaskModel
from .progress import log

Head = tuple[int, int]


class AblationScorer:
    """The metric of the model with `base` heads removed plus a trial ablation, on prepared calibration data.

    `metric(extra)` scores `base | extra`; `accept()` makes the last trial the new base. With `fast=False`
    every score is a full forward pass (the reference the fast path must match).
    """

    def __init__(self, tm: TaskModel, prepared: Prepared, metric_name: str, layers: Iterable[int] = (),
                 fast: bool = True):
        self.tm, self.prepared, self.metric_name = tm, prepared, metric_name
        self.fast = fast
        self.blocks: list[nn.Module] = get_adapter(tm.model).layers(tm.model)
        # layers whose output is cached: the one before each layer an ablation may start at
        self.cached = sorted({l - 1 for l in layers if l > 0})
        self.base: frozenset[Head] = frozenset()
        self._states: list[dict[int, object]] = []  # per model call: layer -> its output under `base`
        self._trial: tuple[frozenset[Head], list[dict[int, object]]] | None = None
        self.passes = 0  # forward passes run (any start layer), for tests and benchmarks
        self.layer_runs = 0  # layers actually run, summed over passes and model calls
        self.dense = self._score(frozenset(), 0, capture=fast)
        self._accept_trial()

    def metric(self, extra: Collection[Head]) -> float:
        """Metric with `base | extra` removed; only layers from the lowest layer of `extra` run again."""
        heads = self.base | frozenset(extra)
        start = min((l for l, _ in extra), default=len(self.blocks)) if self.fast else 0
        if start not in (0, *[c + 1 for c in self.cached]):
            start = 0  # no cached state for this layer: run everything
        return self._score(heads, start, capture=self.fast)

    def accept(self) -> None:
        """Keep the last trial's heads removed; its hidden states become the cache."""
        if self._trial is None:
            raise RuntimeError("accept() needs a metric() call first")
        self._accept_trial()

    def _accept_trial(self) -> None:
        heads, states = self._trial
        self.base = heads
        if self.fast:
            self._states = [{**old, **new} for old, new in zip(self._states, states)] if self._states else states
        self._trial = None

    def _score(self, heads: frozenset[Head], start: int, capture: bool) -> float:
        run = _Pass(start)
        with HeadMask.pruning(self.tm.model, heads), self._hooks(run, capture):
            value = evaluate(self.tm, self.prepared, [self.metric_name])[self.metric_name]
        if self._states and run.calls != len(self._states):
            raise RuntimeError(f"a calibration pass made {run.calls} model calls, the cached one {len(self._states)}")
        self.passes += 1
        self.layer_runs += run.calls * (len(self.blocks) - start)
        self._trial = (heads, run.states)
        if capture and start == 0 and run.seen != [j for _ in range(run.calls) for j in range(len(self.blocks))]:
            log("CF: this model's layers do not run once each, in order, per call; scoring with full forward passes")
            self.fast, self._states = False, []
        return value

    @contextlib.contextmanager
    def _hooks(self, run: "_Pass", capture: bool) -> Iterator[None]:
        """Count model calls (a pre-hook on layer 0), capture cached layers' outputs, skip layers before the start."""
        handles = [self.blocks[0].register_forward_pre_hook(lambda module, args: run.new_call())]

        def capturing(j: int):
            def hook(module, args, output):
                run.seen.append(j)
                if j in self.cached:
                    run.states[-1][j] = output
            return hook

        def skipped(*args, **kwargs):
            return self._states[run.calls - 1][run.start - 1]

        if capture:
            handles += [self.blocks[j].register_forward_hook(capturing(j)) for j in range(run.start, len(self.blocks))]
        for j in range(run.start):
            self.blocks[j].forward = skipped  # an instance attribute shadows the class's forward, for this pass only
        try:
            yield
        finally:
            for j in range(run.start):
                del self.blocks[j].forward
            for h in handles:
                h.remove()


@dataclass
class _Pass:
    """One calibration pass: where it starts, the model calls it made, the layer outputs it captured."""

    start: int
    states: list[dict[int, object]] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self.states)

    def new_call(self) -> None:
        self.states.append({})
