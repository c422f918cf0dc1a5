"""`--layout uniform`: every layer keeps the same numbers of query heads, key/value groups and feed-forward
neurons, so the pruned model is an ordinary model of its family with smaller sizes in its config (a standard
checkpoint, `synprune.export.standard`).

The search is Kwon et al.'s (synprune.selection.search) under the equal-count constraint. A candidate is a triple
(g key/value groups per layer, m query heads in each kept group, n neurons per layer); for a fixed triple the
best choice is, in every layer, the g groups whose m most important heads carry the most importance, those m
heads in each, and the n most important neurons. Every triple within the budget is tried and the one keeping
the most total importance wins (importances on one scale: `units.importances`). Kept groups all keep m heads,
so num_attention_heads = g x m and each group serves m consecutive heads, as transformers' GQA expects.

Families whose config derives the head size from hidden size / heads (BERT-family encoders, DistilBERT, MPNet,
GPT-2: `Adapter.head_dim_in_config` False) cannot hold fewer heads per layer: for them the uniform layout keeps
every head and prunes neurons only, and a heads-only selection is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synprune.arch import get_adapter
from synprune.errors import SynpruneError
from synprune.selection.budget import CostModel, parse_budget
from synprune.selection.select import Selection, n_to_prune

Unit = tuple[int, int]


@dataclass(frozen=True)
class UniformChoice:
    groups: int  # key/value groups kept per layer
    heads_per_group: int  # query heads kept in each kept group
    neurons: int  # neurons kept per layer
    kept_importance: float
    pruned_heads: list[Unit]
    pruned_neurons: list[Unit]

    def summary(self) -> dict:
        return {"kv_groups_per_layer": self.groups, "heads_per_group": self.heads_per_group,
                "heads_per_layer": self.groups * self.heads_per_group, "neurons_per_layer": self.neurons,
                "kept_importance": self.kept_importance}


def _group_values(hi: np.ndarray, gs: int) -> np.ndarray:
    """(layers, groups, gs + 1): the importance of each group's m most important heads, m = 0..gs."""
    L, H = hi.shape
    by_group = -np.sort(-hi.reshape(L, H // gs, gs), axis=2)
    return np.concatenate([np.zeros((L, H // gs, 1)), np.cumsum(by_group, axis=2)], axis=2)


def _top(values: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest values (ties: lower index first)."""
    return sorted(int(i) for i in np.lexsort((np.arange(values.size), -values))[:k])


def uniform_search(hi: np.ndarray, ni: np.ndarray | None, cost: CostModel, kind: str | None, budget: float | None,
                   seq_len: float | None = None, heads_fixed: bool = False, heads_target: int | None = None,
                   neurons_target: int | None = None, whole_groups: bool = False) -> UniformChoice:
    """The uniform allocation of most importance. Either a cost `budget` (in `kind` units, total kept cost
    including what no unit pays for) or fixed per-layer targets: `heads_target` query heads per layer (the
    best g x m <= target, as close as the groups allow) and `neurons_target` neurons. `ni` None: neurons are not
    pruned. `heads_fixed`: every head is kept; `whole_groups`: a kept group keeps all its heads (--units kv-groups)."""
    hi = np.asarray(hi, dtype=np.float64)
    L, H = hi.shape
    G = cost.kv
    gs = H // G
    gv = _group_values(hi, gs)
    head_value = np.zeros((G + 1, gs + 1))  # best total over layers for (g, m)
    for m in range(1, gs + 1):
        best = -np.sort(-gv[:, :, m], axis=1)
        head_value[1:, m] = np.cumsum(best, axis=1).sum(0)
    N = cost.intermediate
    if ni is not None:
        ni = np.asarray(ni, dtype=np.float64)
        neuron_value = np.concatenate([[0.0], np.cumsum(-np.sort(-ni, axis=1), axis=1).sum(0)])
    candidates = [(G, gs)] if heads_fixed else [(g, m) for g in range(1, G + 1) for m in range(1, gs + 1)
                                                if m == gs or not whole_groups]
    if heads_target is not None and not heads_fixed:
        reach = max(g * m for g, m in candidates if g * m <= max(heads_target, 1))
        candidates = [(g, m) for g, m in candidates if g * m == reach]
    best_choice, best_value = None, -np.inf
    for g, m in candidates:
        if ni is None:
            n = N
        elif budget is None:
            n = N if neurons_target is None else neurons_target
        else:
            qc, kvc, nc = cost.query_head_cost(kind, seq_len), cost.kv_group_cost(kind, seq_len), cost.neuron_cost(kind, seq_len)
            fixed = cost.total(kind, seq_len) - L * (H * qc + G * kvc + N * nc)
            rest = budget - fixed - L * (g * m * qc + g * kvc)
            slack = 1e-9 * max(1.0, abs(budget))
            if rest < -slack:
                continue
            n = N if nc <= 0 else min(N, int(np.floor((rest + slack) / (L * nc))))
            if n < 1:
                continue
        value = head_value[g, m] + (neuron_value[n] if ni is not None else 0.0)
        if value > best_value + 1e-15 * abs(value):
            best_choice, best_value = (g, m, n), value
    if best_choice is None:
        what = "all heads and at least one neuron in every layer" if heads_fixed else \
            "the same heads, key/value groups and neurons in every layer, at least one of each"
        raise SynpruneError(f"no uniform layout ({what}) fits budget {kind}:{budget / cost.total(kind, seq_len):.4g}; "
                            "use a larger fraction or --layout adaptive")
    g, m, n = best_choice
    pruned_heads: list[Unit] = []
    pruned_neurons: list[Unit] = []
    for layer in range(L):
        kept_groups = _top(gv[layer, :, m], g)
        kept = {grp * gs + j for grp in kept_groups for j in _top(hi[layer, grp * gs:(grp + 1) * gs], m)}
        pruned_heads += [(layer, h) for h in range(H) if h not in kept]
        if ni is not None:
            keep_n = set(_top(ni[layer], n))
            pruned_neurons += [(layer, i) for i in range(N) if i not in keep_n]
    return UniformChoice(g, m, n, float(best_value), pruned_heads, pruned_neurons)


def select_uniform(ctx, cfg, scores) -> tuple[Selection, dict]:
    """Heads (and, with --units heads,neurons, neurons) to prune under the uniform layout, and what was done."""
    from synprune.selection.units import _rank_scale, ascending, importances

    model = ctx.tm.model
    adapter = get_adapter(model)
    cost = CostModel.from_model(model)
    heads_fixed = not adapter.head_dim_in_config
    info: dict = {"layout": "uniform"}
    if heads_fixed:
        if not cfg.neurons:
            raise SynpruneError(f"--layout uniform: a {adapter.family} config derives the head size from hidden size / "
                                "heads, so every layer must keep all its heads; prune neurons too (--units heads,neurons) "
                                "or use --layout adaptive")
        info["heads_kept_whole"] = f"a {adapter.family} config cannot hold fewer heads per layer; neurons only"
    budget = parse_budget(cfg.budget) if cfg.budget else None
    if budget is not None and budget.kind == "heads":
        if cfg.neurons:
            raise SynpruneError("--budget heads:F counts heads only; with --units heads,neurons use flops:F or params:F")
        budget, sparsity = None, round(1.0 - parse_budget(cfg.budget).keep, 12)
    else:
        sparsity = cfg.sparsity
    ns = None
    if cfg.neurons:
        from synprune.methods.neurons import neuron_scores

        ns = neuron_scores(ctx, cfg)
        info.update({"neuron_score": ns.kind, **{f"neuron_{k}": v for k, v in ns.details.items()}})
    if budget is not None:
        seq_len = ctx.mean_length() if budget.kind == "flops" else None
        if ns is not None:
            hi, ni, _, how = importances(ctx, cfg, scores, ns)
        else:
            hi, ni, how = _rank_scale(scores.order, ctx.tm.grid), None, "the method's order as ranks"
        choice = uniform_search(hi, ni, cost, budget.kind, budget.keep * cost.total(budget.kind, seq_len), seq_len,
                                heads_fixed, whole_groups=cfg.units == "kv-groups")
    else:
        H = cost.n_heads
        gs = cost.group_size if cfg.units == "kv-groups" else 1
        heads_target = H - gs * n_to_prune(sparsity, H // gs)
        hi = _rank_scale(scores.order, ctx.tm.grid)
        ni = None if ns is None else _rank_scale(ascending(ns.scores), ns.scores.shape)
        how = "ranks scaled to (0, 1]"
        choice = uniform_search(hi, ni, cost, None, None, None, heads_fixed, heads_target,
                                None if ns is None else cost.intermediate - n_to_prune(sparsity, cost.intermediate),
                                whole_groups=cfg.units == "kv-groups")
    neurons = choice.pruned_neurons
    if ns is not None and cfg.rearrange and ns.grads is not None and neurons:
        from synprune.selection.search import rearrange

        neurons = rearrange(neurons, ns.grads)  # same count per layer: still uniform
    info.update({"importance": how, "uniform": choice.summary(),
                 "rearranged": bool(ns is not None and cfg.rearrange and ns.grads is not None)})
    return Selection(sorted(choice.pruned_heads), [], neurons=sorted(neurons)), info
