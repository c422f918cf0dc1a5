"""Candidate Filtering (SPEC section 4): re-check the top of any method's ranking against the task metric.

The pool is the top ceil(R * N) heads of the method's order. On the calibration split each candidate is
first scored alone (the metric with only it removed); candidates are then walked from the smallest drop
to the largest, and a removal is kept only while the metric stays within the tolerance (above the floor for a
higher-is-better metric, below the ceiling for perplexity). Ablations
are scored by `layercache.AblationScorer`, which re-runs only the layers a removal changes.
"""
from __future__ import annotations

import math
from typing import Protocol, Sequence

from synprune.calibrate.context import Calibration
from synprune.errors import SynpruneError
from synprune.cf.layercache import AblationScorer
from synprune.data.metrics import goodness
from synprune.progress import bar, log
from synprune.selection.select import Pruning, Selection

Head = tuple[int, int]


class Options(Protocol):
    """What CF reads of a run's options (`synprune.config.PruneConfig`)."""

    sparsity: float
    layer_fraction: float
    pool_ratio: float | None
    tolerance: float
    tolerance_abs: float | None


def pool_size(cfg: Options, n_heads: int) -> int:
    """ceil(R * N) with R = --pool-ratio, default min(1, sparsity + 0.25)."""
    ratio = cfg.pool_ratio if cfg.pool_ratio is not None else min(1.0, cfg.sparsity + 0.25)
    return min(n_heads, math.ceil(ratio * n_heads - 1e-9))


def metric_floor(m0: float, cfg: Options) -> float:
    """The worst metric a kept removal may leave, on the higher-is-better scale of `metrics.goodness`.

    Absolute (`tolerance_abs`): m0 - tolerance_abs. Relative (`tolerance`): m0 - (1 - tolerance) * |m0|, which
    is tolerance * m0 for a positive m0 and, for a negative or zero m0 (e.g. Matthews corr. of a weak model),
    still allows a drop of (1 - tolerance) of the metric's size instead of demanding an improvement. For a
    lower-is-better metric m0 is the negated value, so a perplexity may rise to (2 - tolerance) x dense
    (tolerance 0.95: 5% worse), or by tolerance_abs.
    """
    if cfg.tolerance_abs is not None:
        return m0 - cfg.tolerance_abs
    return m0 - (1.0 - cfg.tolerance) * abs(m0)


def _entry(stage: str, head: Head, metric: float | None, removed: bool, heads: Sequence[Head], **extra) -> dict:
    return {"stage": stage, "layer": head[0], "head": head[1], "metric": metric, "kept": not removed,
            "removed": removed, "heads": [list(h) for h in heads], **extra}


def candidate_filter(ctx: Calibration, order: Sequence[Head], n_prune: int, cfg: Options,
                     fast: bool = True, background: tuple = ()) -> tuple[Selection, list[dict]]:
    """Choose `n_prune` heads from the top of `order` (most prunable first), checked on the calibration split.

    Returns the selection and one log entry per decision, in the order they were made:
      - stage "single": a candidate scored alone (`metric`); it is put back, so kept=True, removed=False.
      - stage "walk": a removal tried on top of those already kept: removed=True if the metric stayed at or
        above `floor`, else kept=True (put back). Entries with metric None were not tried: `reason` says
        why (gone with its layer, or its layer's removal would overshoot the budget).
      - stage "fill": the pool ran out before the budget; the head was removed unchecked (metric None).
    `kept` always means the head is still in the model after that decision; `removed` is its negation.
    `heads` lists every head the decision removes (more than one when the layer rule takes the whole layer).
    Fill-up takes the heads outside the pool first, by the method's order (none of them was tested), then
    the rejected candidates, by the method's order; the selection's `fill` flag says it happened.
    `fast=False` scores every ablation with a full forward pass and reuses nothing, not even a metric it has
    already computed (the naive reference: same decisions, for benchmarks and tests).
    """
    grid = ctx.tm.grid
    n_heads = grid[0] * grid[1]
    order = [(int(l), int(h)) for l, h in order]
    if n_prune <= 0:
        return Selection([], []), []
    if not ctx.metric_names:
        raise SynpruneError("--cf needs a task metric to check candidates against; pass a labelled task")
    pool = order[:pool_size(cfg, n_heads)]
    metric = ctx.metric_names[0]
    if fast:  # one scorer and one table of known metrics for every CF run on this calibration context
        trial = _shared_trials(ctx, background)
    else:
        trial = _Trials(AblationScorer(ctx.tm, ctx.prepared, metric, fast=False), {})
    m0 = trial.known[frozenset()]
    floor = goodness(metric, metric_floor(goodness(metric, m0), cfg))  # in the metric's own units
    entries: list[dict] = []

    single: dict[Head, float] = {}
    with bar("CF: candidates alone", len(pool)) as advance:
        for head in pool:
            heads = _alone(grid, cfg, head)
            single[head] = trial.metric(frozenset(), heads)
            entries.append(_entry("single", head, single[head], False, heads, dense=m0))
            advance()

    state = Pruning(grid, n_prune, cfg.layer_fraction)
    with bar("CF: greedy walk", len(pool)) as advance:
        for head in walk_order(pool, single, order, metric):
            advance()
            if state.full:
                break
            if head in state.pruned:
                entries.append(_entry("walk", head, None, True, [], reason="removed with its layer"))
                continue
            heads = state.expand(head)
            if not heads:
                reason = "its layer's removal would overshoot the budget"
                entries.append(_entry("walk", head, None, False, [], reason=reason))
            else:
                value = trial.metric(frozenset(state.pruned), heads)
                ok = goodness(metric, value) >= goodness(metric, floor)
                if ok:
                    trial.accept()
                    state.add(heads)
                entries.append(_entry("walk", head, value, ok, heads, floor=floor))

    fill = not state.full
    if fill:
        walked = len(state.pruned)
        outside = [h for h in order if h not in single]
        for head in outside + [h for h in order if h in single]:
            if state.full:
                break
            heads = state.expand(head)
            if heads:
                state.add(heads)
                entries.append(_entry("fill", head, None, True, heads, reason="pool ran out"))
        log(f"CF: the pool of {len(pool)} candidates gave {walked} of {n_prune} heads within tolerance; "
            f"filled {len(state.pruned) - walked} more by the method's order")
    return state.selection(fill), entries


def _alone(grid: tuple[int, int], cfg: Options, head: Head) -> list[Head]:
    """The heads removed when `head` is scored alone (its whole layer where the layer rule says so)."""
    return Pruning(grid, grid[0] * grid[1], cfg.layer_fraction).expand(head)


def walk_order(pool: Sequence[Head], single: dict[Head, float], order: Sequence[Head], metric: str) -> list[Head]:
    """The walk tries the pool from the smallest drop alone to the largest; ties by the method's order."""
    rank = {h: i for i, h in enumerate(order)}
    return sorted(pool, key=lambda h: (-goodness(metric, single[h]), rank[h]))


def metric_table(ctx: Calibration, background: tuple = ()) -> dict[frozenset[Head], float]:
    """The context's table "removed heads -> calibration metric" that every fast CF run on it shares
    (`background`: units pruned underneath the whole walk, e.g. neurons masked by the caller)."""
    return ctx.memo(("cf-metric", ctx.metric_names[0], tuple(background)), dict)


def _shared_trials(ctx: Calibration, background: tuple = ()) -> "_Trials":
    key = (ctx.metric_names[0], tuple(background))
    grid = ctx.tm.grid
    scorer = ctx.memo(("cf-scorer", *key), lambda: AblationScorer(ctx.tm, ctx.prepared, key[0], range(grid[0])))
    return _Trials(scorer, metric_table(ctx, background), getattr(ctx, "pace", lambda: None))


def score_alone(ctx: Calibration, heads: Sequence[Head], cfg: Options) -> None:
    """Score each of `heads` alone into the context's table: the first stage of any walk whose pool holds them,
    done ahead (a sweep does it in whichever process is free)."""
    trial = _shared_trials(ctx)
    for head in heads:
        trial.metric(frozenset(), _alone(ctx.tm.grid, cfg, (int(head[0]), int(head[1]))))


def walk_key(ctx: Calibration, order: Sequence[Head], n_prune: int, cfg: Options) -> tuple | None:
    """What decides a fast CF walk once its pool's heads are scored alone (None until they all are): two runs
    with the same key make the same passes, so the second can wait for the first and find them all known."""
    grid = ctx.tm.grid
    order = [(int(l), int(h)) for l, h in order]
    pool = order[:pool_size(cfg, grid[0] * grid[1])]
    table = metric_table(ctx)
    sets = {h: frozenset(_alone(grid, cfg, h)) for h in pool}
    if any(s not in table for s in sets.values()):
        return None
    metric = ctx.metric_names[0]
    sequence = walk_order(pool, {h: table[s] for h, s in sets.items()}, order, metric)
    return tuple(sequence), n_prune, cfg.layer_fraction, cfg.tolerance, cfg.tolerance_abs


class _Trials:
    """The metric of a set of removed heads is the same whoever asks: a head alone, a walk step whose earlier
    steps were all put back, or the same step in another CF run on this calibration context (another budget or
    method whose walk reached the same state). `known` maps each removed set to its metric; only sets not in
    it cost a pass. Passes are exact and deterministic, so a known value is the value a pass would give."""

    def __init__(self, scorer: AblationScorer, known: dict[frozenset[Head], float], pace=lambda: None):
        self.scorer, self.known, self.pace = scorer, known, pace
        self.known.setdefault(frozenset(), scorer.dense)
        scorer.assume(frozenset())  # a shared scorer may still hold the last run's removals
        self._last: frozenset[Head] | None = None
        self._ran = False

    def metric(self, base: frozenset[Head], heads: Sequence[Head]) -> float:
        key = base | frozenset(heads)
        self._last, self._ran = key, key not in self.known
        if self._ran:
            self.pace()
            self.known[key] = self.scorer.metric(heads)
        return self.known[key]

    def accept(self) -> None:
        if self._ran:
            self.scorer.accept()
        else:
            self.scorer.assume(self._last)


def summarize(entries: Sequence[dict]) -> dict:
    """Counts for a CF log: candidates scored alone, removals tried / kept / rejected in the walk, heads filled."""
    walk = [e for e in entries if e["stage"] == "walk" and e["metric"] is not None]
    filled = [e for e in entries if e["stage"] == "fill"]
    return {"pool": sum(e["stage"] == "single" for e in entries), "tried": len(walk),
            "removed": sum(e["removed"] for e in walk), "rejected": sum(e["kept"] for e in walk),
            "filled": sum(len(e["heads"]) for e in filled), "fill": bool(filled)}
