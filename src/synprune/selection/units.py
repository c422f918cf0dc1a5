"""Selection with `--units heads,neurons`: which query heads and feed-forward neurons to prune.

- `--sparsity s`: s of the heads by the method's order and s of the neurons by the neuron scores.
- `--budget flops:F` / `params:F`: Kwon et al.'s search (synprune.selection.search) keeps the most importance under the
  budget, heads and neurons priced by their real cost (`CostModel`, MACs at the task's mean length). The search
  needs importances on one scale. With a gradient neuron score (fisher, output-fisher) both sides are Fisher
  diagonals of the same objective; a head method that is not that Fisher (sap, sapx, magnitude, ...) keeps its
  own order and takes the Fisher's head values in that order (the i-th most prunable head gets the i-th
  smallest value), so the method decides which heads and the Fisher how heads trade against neurons. With a
  weight/activation neuron score (magnitude, wanda) both sides are ranks scaled to (0, 1].
  Then, with a gradient neuron score, Kwon's rearrangement re-chooses each layer's pruned neurons (and heads,
  when the head scores are that Fisher), and a last pass prunes the next least important units should the
  exact cost (layer biases, shared key/value groups) still exceed the budget.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from synprune.selection.budget import CostModel, parse_budget
from synprune.errors import SynpruneError
from synprune.methods import Head, HeadScores
from synprune.methods.neurons import GRADIENT, NeuronScores, neuron_scores
from synprune.selection.search import rearrange, search, unit_costs
from synprune.selection.select import Selection, n_to_prune, select

SAME_FISHER = {"fisher": ("fisher", "kwon", "recon"), "output-fisher": ("output-fisher",)}


def ascending(values: np.ndarray) -> list[Head]:
    """Units by value, lowest (most prunable) first; ties by position."""
    flat = np.lexsort((np.arange(values.size), values.ravel()))
    return [(int(i) // values.shape[1], int(i) % values.shape[1]) for i in flat]


def _rank_scale(order: Sequence[Head], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape)
    for i, u in enumerate(order):
        out[u] = (i + 1) / len(order)
    return out


def importances(ctx, cfg, scores: HeadScores, ns: NeuronScores) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """(head importance, neuron importance, head gradients for rearrangement or None, how they were made)."""
    grid = ctx.tm.grid
    if ns.kind not in GRADIENT:
        return (_rank_scale(scores.order, grid), _rank_scale(ascending(ns.scores), ns.scores.shape), None,
                "ranks scaled to (0, 1] on both sides")
    from synprune.methods.gradient import OUTPUT_FISHER, unit_gradients

    kind = OUTPUT_FISHER if ns.kind == "output-fisher" else None
    hg, _, _ = unit_gradients(ctx, cfg, kind)
    fisher = (hg ** 2).sum(0)
    if cfg.method in SAME_FISHER[ns.kind]:
        return fisher, ns.scores, hg, f"{ns.kind} diagonal on both sides"
    head = np.zeros(grid)
    for value, u in zip(np.sort(fisher.ravel()), scores.order):
        head[u] = value
    return head, ns.scores, None, f"{cfg.method}'s head order carrying the {ns.kind} head values"


# CF's walk over `n` heads with the given neurons pruned underneath: (selection, CF's log). CF is a later stage,
# so the run passes it in.
FilterHeads = Callable[[int, list[Head]], tuple[Selection, list[dict]]]


def select_units(ctx, cfg, scores: HeadScores, filter_heads: FilterHeads | None = None) -> tuple[Selection, dict]:
    """Heads and neurons to prune (see the module doc), and what was done; with `cfg.cf`, `filter_heads` re-chooses
    the heads."""
    ns = neuron_scores(ctx, cfg)
    model = ctx.tm.model
    info: dict = {"neuron_score": ns.kind, **{f"neuron_{k}": v for k, v in ns.details.items()}}
    if not cfg.budget:
        neurons = sorted(ascending(ns.scores)[:n_to_prune(cfg.sparsity, ns.scores.size)])
        return _heads(ctx, cfg, scores, n_to_prune(cfg.sparsity, ctx.tm.n_heads), neurons, info, filter_heads), info
    budget = parse_budget(cfg.budget)
    if budget.kind == "heads":
        raise SynpruneError("--budget heads:F counts heads only; with --units heads,neurons use flops:F or params:F")
    seq_len = ctx.mean_length() if budget.kind == "flops" else None
    cost = CostModel.from_model(model)
    hi, ni, hg, how = importances(ctx, cfg, scores, ns)
    ch, cn = unit_costs(cost, budget.kind, seq_len)
    total = cost.total(budget.kind, seq_len)
    fixed = total - hi.size * ch - ni.size * cn  # what no unit pays for (biases kept)
    found = search(hi, ni, ch, cn, budget.keep * total - fixed)
    heads, neurons = found.heads, found.neurons
    if cfg.rearrange and ns.grads is not None:
        neurons = rearrange(neurons, ns.grads)
        if hg is not None:
            heads = rearrange(heads, hg)
    heads, neurons, extra = _meet(cost, budget, seq_len, hi, ni, heads, neurons)
    info.update({"importance": how, "search": {"heads_kept": found.heads_kept, "neurons_kept": found.neurons_kept,
                                               "kept_importance": found.kept_importance},
                 "rearranged": bool(cfg.rearrange and ns.grads is not None), "extra_pruned_to_meet": extra})
    if cfg.cf:  # CF re-chooses which heads (as many as the search pruned), with the searched neurons pruned
        return _heads(ctx, cfg, scores, len(heads), neurons, info, filter_heads), info
    removed = sorted(l for l in range(ctx.tm.grid[0]) if sum(1 for x, _ in heads if x == l) == ctx.tm.grid[1])
    return Selection(heads, removed, neurons=neurons), info


def _heads(ctx, cfg, scores: HeadScores, n: int, neurons: list[Head], info: dict,
           filter_heads: FilterHeads | None) -> Selection:
    """`n` heads by the method's order, or by CF's walk with `neurons` pruned underneath."""
    if not cfg.cf:
        s = select(scores.order, ctx.tm.grid, n, cfg.layer_fraction)
        return Selection(s.pruned, s.removed_layers, neurons=neurons)
    if filter_heads is None:
        raise ValueError("cfg.cf asks for Candidate Filtering: pass filter_heads")
    s, log = filter_heads(n, neurons)
    info["cf_log"] = log
    return Selection(s.pruned, s.removed_layers, s.fill, neurons=neurons)


def _meet(cost: CostModel, budget, seq_len, hi, ni, heads, neurons) -> tuple[list[Head], list[Head], int]:
    """Prune the least important kept neurons (then heads) until the exact cost meets the budget."""
    heads, neurons = sorted(heads), sorted(neurons)
    gone_n, gone_h = set(neurons), set(heads)
    queue = [("n", u) for u in ascending(ni) if u not in gone_n] + [("h", u) for u in ascending(hi) if u not in gone_h]
    extra = 0
    target = budget.keep * (1 + 1e-12)
    for kind, u in queue:
        if cost.kept_fraction(heads, budget.kind, seq_len, neurons=neurons) <= target:
            break
        (neurons if kind == "n" else heads).append(u)
        extra += 1
    return sorted(heads), sorted(neurons), extra
