"""Kwon et al. 2022's mask search: the heads and feed-forward neurons to keep under a cost budget.

`search` keeps the units of most total importance whose cost fits the budget. Every query head costs the same
and every neuron costs the same (`CostModel`: their real MACs at the task's mean length, or parameters), so
for each number k of heads kept the best choice is the k most important heads plus as many of the most
important neurons as the rest of the budget pays for; trying every k gives the optimum (Kwon et al.'s
observation). Importances must be on one scale (Fisher diagonals of the head and neuron masks are).

`rearrange` is Kwon et al.'s mask rearrangement: the search treats units as independent (the Fisher
diagonal); inside a layer, with the layer's number of pruned units fixed, it re-chooses which ones by the
Fisher matrix's off-diagonal part: the loss change of pruning a set P is about sum_b (sum_{u in P} g_ub)^2, so
a greedy pass grows P in ascending order of importance and, after each addition, drops the unit whose
removal makes that sum smallest.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synprune.selection.budget import CostModel

Unit = tuple[int, int]


@dataclass(frozen=True)
class SearchResult:
    heads: list[Unit]  # pruned query heads
    neurons: list[Unit]  # pruned neurons
    kept_importance: float
    heads_kept: int
    neurons_kept: int


def search(head_importance: np.ndarray, neuron_importance: np.ndarray, head_cost: float, neuron_cost: float,
           budget: float) -> SearchResult:
    """Prune to total cost <= `budget` (same unit as the costs), keeping the most importance."""
    hi = np.asarray(head_importance, dtype=np.float64)
    ni = np.asarray(neuron_importance, dtype=np.float64)
    h_order = _descending(hi)
    n_order = _descending(ni)
    h_cum = np.concatenate([[0.0], np.cumsum(hi.ravel()[h_order])])
    n_cum = np.concatenate([[0.0], np.cumsum(ni.ravel()[n_order])])
    best = (-np.inf, 0, 0)
    slack = 1e-9 * max(1.0, abs(budget))
    for k in range(hi.size + 1):
        rest = budget - k * head_cost
        if rest < -slack:
            break
        n = ni.size if neuron_cost <= 0 else min(ni.size, int(np.floor((rest + slack) / neuron_cost)))
        value = h_cum[k] + n_cum[n]
        if value > best[0] + 1e-15 * abs(value):
            best = (value, k, n)
    value, k, n = best
    if value == -np.inf:  # not even zero heads fit: keep nothing
        value, k, n = 0.0, 0, 0
    return SearchResult(_units(h_order[k:], hi.shape), _units(n_order[n:], ni.shape), float(value), k, n)


def _descending(x: np.ndarray) -> np.ndarray:
    """Flat indices by importance, highest first (ties: lower index first): a deterministic order."""
    return np.lexsort((np.arange(x.size), -x.ravel()))


def _units(flat: np.ndarray, shape: tuple[int, int]) -> list[Unit]:
    return sorted((int(i) // shape[1], int(i) % shape[1]) for i in flat)


def rearrange(pruned: list[Unit], grads: np.ndarray) -> list[Unit]:
    """Re-choose each layer's pruned units (same count per layer) from per-batch mask gradients
    (batches, layers, units); see the module doc."""
    by_layer: dict[int, int] = {}
    for layer, _ in pruned:
        by_layer[layer] = by_layer.get(layer, 0) + 1
    out: list[Unit] = []
    for layer, n_pruned in sorted(by_layer.items()):
        g = np.asarray(grads[:, layer, :], dtype=np.float64).T  # (units, batches)
        if n_pruned >= g.shape[0]:
            out += [(layer, u) for u in range(g.shape[0])]
            continue
        out += [(layer, u) for u in greedy_set(g, n_pruned)]
    return sorted(out)


def greedy_set(g: np.ndarray, n_pruned: int) -> list[int]:
    """`n_pruned` rows of g (units x batches) whose sum has a small squared norm, grown greedily from the rows
    of smallest squared norm."""
    order = list(np.lexsort((np.arange(g.shape[0]), (g ** 2).sum(1))))
    chosen = order[:n_pruned]
    total = g[chosen].sum(0)
    for u in order[n_pruned:]:
        chosen.append(u)
        total = total + g[u]
        rest = total[None, :] - g[chosen]  # the sum without each member
        drop = int(np.argmin((rest ** 2).sum(1)))
        total = rest[drop]
        del chosen[drop]
    return sorted(int(u) for u in chosen)


def unit_costs(cost: CostModel, kind: str, seq_len: float | None) -> tuple[float, float]:
    """(per query head with its share of its key/value group, per neuron) in `kind` units."""
    return cost.head_cost(kind, seq_len), cost.neuron_cost(kind, seq_len)
