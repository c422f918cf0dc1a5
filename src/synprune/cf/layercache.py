"""Score head ablations on calibration data, re-running only what an ablation changes.

Removing heads of layer l cannot change what enters layer l, nor what its heads compute (heads are masked at
the input of the attention out-projection, after they have run). So `AblationScorer` keeps, for every model
call of a calibration pass and under the currently accepted removals, the output of the layer before each
layer an ablation may start at, and the heads' output in that layer. A pass for an ablation starting at
layer l then skips layers 0..l-1 (their `forward` is swapped, for that pass only, for one that returns the
cached output) and, in layer l, the query/key/value projections (swapped for zeros; the attention over them
is discarded): the cached heads' output goes to the masked out-projection. The model does the rest as
usual (embeddings, attention-mask building, the rest of layer l, layers l+1..L-1, pooling or classifier),
and the metric is computed by `evaluate` as for any other evaluation. This works for any encoder whose
layers (from `synprune.arch`) run once each, in order, per model call; a model where that check fails is
scored with full forward passes instead.

Passes run on a copy of the model with the accepted removals physically sliced away (`remove.remove_units`, kept
up to date as removals are accepted), so a removed head costs nothing in later passes: the masked model's
numbers (a removed head only added zeros), at the pruned model's cost. A cached heads' output captured before
a slicing is narrowed to the heads the layer still has when it is used. A model that carries its caller's hooks
(units masked underneath the walk) is not copied: its passes mask the removals instead.

Memory: two hidden-size tensors per model call and per start layer, i.e. about
2 x calibration examples x tokens x hidden size x 4 bytes per layer (x 2 for sentence-pair embedding models).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Collection, Iterable, Iterator

import torch
from torch import nn

from synprune.arch import AttentionHandles, attention_handles, get_adapter, out_dim
from synprune.evaluation.evaluate import Prepared, evaluate
from synprune.devices import dispatched
from synprune.model.activations import forward_replaced
from synprune.model.masking import HeadMask
from synprune.model.load import TaskModel
from synprune.progress import log
from synprune.model.remove import remove_heads, without_heads

Head = tuple[int, int]


class AblationScorer:
    """The metric of the model with `base` heads removed plus a trial ablation, on prepared calibration data.

    `metric(extra)` scores `base | extra`; `accept()` makes the last trial the new base; `assume(heads)` makes
    `heads` the base without a pass (its metric is known from elsewhere). A pass starts at the lowest layer
    where its removals differ from those the cache holds (the accepted ones, or none: the dense pass's states
    are kept too), so after `assume` no pass is spent only to bring the cache up to date: the next trial runs
    from the lowest changed layer and, if accepted, becomes the cache. With `fast=False` every score is a full
    forward pass (the reference the fast path must match). `layers` are the layers ablations may start at;
    only their inputs are cached.
    """

    def __init__(self, tm: TaskModel, prepared: Prepared, metric_name: str, layers: Iterable[int] = (),
                 fast: bool = True):
        self.tm, self.prepared, self.metric_name = tm, prepared, metric_name
        self.fast = fast
        # a caller's own hooks (e.g. neurons masked underneath CF) would be copied with the model and index its old
        # shapes: then passes stay on the masked model itself
        # and a model spread over devices (or offloaded) by a device_map is not copied either
        self.slicing = fast and not dispatched(tm.model) and not any(
            m._forward_pre_hooks or m._forward_hooks for m in tm.model.modules())
        self.starts = sorted(set(layers) | {0})
        self.sliced, self.cut = tm, frozenset()  # passes run on `sliced`: tm, or a copy without the `cut` heads
        self._bind()
        self.base: frozenset[Head] = frozenset()
        self._cached_for: frozenset[Head] = frozenset()  # the removals the cached states were computed under
        # per model call of a pass: ("out", j) -> layer j's output, ("ctx", j) -> its heads' output (before masking)
        self._states: list[dict[tuple[str, int], object]] = []
        self._layout: dict[int, tuple[int, ...]] = {}  # layer -> the heads its cached output holds (original indices)
        self._trial: tuple[frozenset[Head], list[dict], dict] | None = None  # heads, states, their layout
        self.passes = 0  # forward passes run (any start layer), for tests and benchmarks
        self.layer_runs = 0  # layers run, summed over passes and model calls (a start layer counts whole)
        self.dense = self._score(frozenset(), 0, capture=fast)
        self._accept_trial()
        self._dense_cache = (self._states, dict(self._layout))  # never changed in place: accepts make new dicts

    def metric(self, extra: Collection[Head]) -> float:
        """Metric with `base | extra` removed; only layers from the lowest layer where that differs from the
        cache's removals run again (from the dense states where that starts higher)."""
        heads = self.base | frozenset(extra)
        if self.fast and self._cached_for and self._start(heads) > self._start(heads ^ self._cached_for):
            self._states, layout = self._dense_cache
            self._layout, self._cached_for = dict(layout), frozenset()
        return self._score(heads, self._start(heads ^ self._cached_for), capture=self.fast)

    def assume(self, heads: Collection[Head]) -> None:
        """Make `heads` the base without running anything (a caller that already knows their metric)."""
        self.base, self._trial = frozenset(heads), None

    def _start(self, changed: Iterable[Head]) -> int:
        start = min((l for l, _ in changed), default=0) if self.fast else 0
        return start if start in self.starts else 0

    def accept(self) -> None:
        """Keep the last trial's heads removed; its hidden states become the cache."""
        if self._trial is None:
            raise RuntimeError("accept() needs a metric() call first")
        self._accept_trial()

    def _accept_trial(self) -> None:
        heads, states, layout = self._trial
        self.base = heads
        if self.fast:
            self._states = [{**old, **new} for old, new in zip(self._states, states)] if self._states else states
            self._layout.update(layout)
            self._cached_for = heads
            if self.slicing:  # later passes do not compute the accepted heads at all
                self._cut_to(heads)
        self._trial = None

    def _cut_to(self, removed: frozenset[Head]) -> None:
        """Passes run on a copy without `removed` heads: the current copy sliced further where it lacks only some
        of them, else a fresh copy (the caller's model itself when nothing is removed)."""
        if removed == self.cut:
            return
        if not removed:
            self.sliced = self.tm
        elif self.sliced is not self.tm and self.cut <= removed:
            remove_heads(self.sliced.model, removed - self.cut)
        else:
            self.sliced = replace(self.tm, model=without_heads(self.tm.model, removed))
        self.cut = removed
        self._bind()

    def _bind(self) -> None:
        model = self.sliced.model
        self.blocks: list[nn.Module] = get_adapter(model).layers(model)
        self.attn: dict[int, AttentionHandles] = {h.layer: h for h in attention_handles(model)}

    def _score(self, heads: frozenset[Head], start: int, capture: bool) -> float:
        if not self.cut <= heads:  # a pass that needs sliced heads back (after `assume`)
            self._cut_to(heads & self.cut)
        reuse = bool(self._states) and capture
        covered = start not in self.attn or set(self.attn[start].kept_heads) <= set(self._layout.get(start, ()))
        run = _Pass(start, reuse=reuse, shortcut=reuse and covered)
        with HeadMask.pruning(self.sliced.model, heads), self._hooks(run, capture):
            value = evaluate(self.sliced, self.prepared, [self.metric_name])[self.metric_name]
        if self._states and run.calls != len(self._states):
            raise RuntimeError(f"a calibration pass made {run.calls} model calls, the cached one {len(self._states)}")
        self.passes += 1
        self.layer_runs += run.calls * (len(self.blocks) - start)
        self._trial = (heads, run.states, run.layout)
        if capture and not run.reuse and run.seen != [j for _ in range(run.calls) for j in range(len(self.blocks))]:
            log("CF: this model's layers do not run once each, in order, per call; scoring with full forward passes")
            self.fast, self._states = False, []
        return value

    @contextlib.contextmanager
    def _hooks(self, run: "_Pass", capture: bool) -> Iterator[None]:
        """Count model calls (a pre-hook on layer 0) and capture what later passes start from. A pass that
        reuses the cache skips the layers before its start layer, and in the start layer the query, key and
        value projections and attention: the heads' cached output goes straight to the (masked) out-projection.
        """
        handles = [self.blocks[0].register_forward_pre_hook(lambda module, args: run.new_call())]
        stubbed = contextlib.ExitStack()

        def output_hook(j: int):
            def hook(module, args, output):
                run.seen.append(j)
                if j + 1 in self.starts:
                    run.states[-1][("out", j)] = output
            return hook

        def heads_hook(j: int):
            kept = tuple(self.attn[j].kept_heads)
            run.layout[j] = kept
            if run.shortcut and j == run.start:  # the cached heads' output, narrowed to the heads still here
                held = self._layout[j]
                pos = None if held == kept else torch.tensor(
                    [held.index(h) * self.attn[j].head_dim + i for h in kept for i in range(self.attn[j].head_dim)])

            def hook(module, args):
                if run.shortcut and j == run.start:
                    cached = self._states[run.calls - 1][("ctx", j)]
                    args = (cached if pos is None else cached.index_select(-1, pos.to(cached.device)), *args[1:])
                run.states[-1][("ctx", j)] = args[0]
                return args
            return hook

        def skipped(*args, **kwargs):
            return self._states[run.calls - 1][("out", run.start - 1)]

        def zeros(module: nn.Module):
            n = out_dim(module)
            return lambda x: x.new_zeros(*x.shape[:-1], n)

        if capture:
            for j in range(run.start, len(self.blocks)):
                handles.append(self.blocks[j].register_forward_hook(output_hook(j)))
                if j in self.starts and j in self.attn:  # prepended: sees the heads' output before HeadMask
                    handles.append(self.attn[j].out_proj.register_forward_pre_hook(heads_hook(j), prepend=True))
        if run.reuse:  # for this pass only
            stubbed.enter_context(forward_replaced(self.blocks[:run.start], lambda block: skipped))
            if run.shortcut and run.start in self.attn:
                a = self.attn[run.start]
                # one module where q, k and v are fused; their output only feeds the attention we replace
                stubbed.enter_context(forward_replaced(list(dict.fromkeys((a.query, a.key, a.value))), zeros))
        try:
            with stubbed:
                yield
        finally:
            for h in handles:
                h.remove()


@dataclass
class _Pass:
    """One calibration pass: where it starts, whether it starts from the cache, the model calls it made and
    what it captured."""

    start: int
    reuse: bool  # layers before `start` are skipped (their cached outputs stand in)
    shortcut: bool = False  # in layer `start`, the cached heads' output stands in for q/k/v and attention
    states: list[dict[tuple[str, int], object]] = field(default_factory=list)
    layout: dict[int, tuple[int, ...]] = field(default_factory=dict)  # layer -> heads its captured output holds
    seen: list[int] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self.states)

    def new_call(self) -> None:
        self.states.append({})
