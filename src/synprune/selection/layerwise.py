"""Per-layer selection for the layer-local recipe (`--stream`, synprune.run.stream): each layer keeps its own
share of the budget, decided from that layer's scores alone, so a layer can be pruned and written before the
next one is read.

- `--sparsity s`: s of the layer's query heads (and, with neurons, s of its neurons), lowest scores first.
- `--budget params:F` / `flops:F`: the layer keeps at most F of its own attention + feed-forward cost. Inside the
  layer, where both sides are `layer-fisher` (one scale: the squared norm each unit adds to the residual
  stream), Kwon et al.'s search (synprune.selection.search) trades heads against neurons by their real costs;
  with scores on two scales (flap heads, wanda neurons) the layer prunes 1 - F of its heads and of its neurons,
  lowest scores first (ranks scaled to (0, 1] on both sides, as synprune.selection.units does, made the
  search drop every head of every SmolLM2 layer at params:0.7, perplexity 90 -> 51290: a head costs 57
  neurons, and ranks do not say that a head is worth more). The exact cost (shared key/value groups, a block
  removed whole) is then met by pruning the next least important units, neurons first. Every layer meeting F
  means the model meets F.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from synprune.errors import SynpruneError
from synprune.selection.budget import Budget, CostModel
from synprune.selection.search import search, unit_costs
from synprune.selection.select import n_to_prune
from synprune.selection.units import _meet, ascending


def select_layer(cost: CostModel, heads: np.ndarray, neurons: np.ndarray | None, *, budget: Budget | None = None,
                 sparsity: float = 0.0, seq_len: float | None = None, same_scale: bool = False) -> tuple[list[int], list[int]]:
    """(pruned query heads, pruned neurons) of one layer from its scores (full-size arrays, higher = keep;
    `neurons` None: heads only). `cost` is the whole model's cost model."""
    hs = np.asarray(heads, dtype=np.float64)[None, :]
    ns = None if neurons is None else np.asarray(neurons, dtype=np.float64)[None, :]
    if budget is None:
        h = [u for _, u in ascending(hs)[:n_to_prune(sparsity, hs.size)]]
        n = [] if ns is None else [u for _, u in ascending(ns)[:n_to_prune(sparsity, ns.size)]]
        return sorted(h), sorted(n)
    if budget.kind == "heads":
        raise SynpruneError("the layer-local recipe divides a params:F or flops:F budget over the layers; for a "
                            "fraction of heads pass --sparsity")
    one = replace(cost, n_layers=1, fixed_params=0.0)  # a layer's share is of its own cost, not the embeddings'
    if ns is None:
        ns = np.zeros((1, 0))
    if same_scale:  # one scale: Kwon et al.'s search trades heads against neurons by their real costs
        ch, cn = unit_costs(one, budget.kind, seq_len)
        total = one.total(budget.kind, seq_len)
        fixed = total - hs.size * ch - cost.intermediate * cn  # what no unit pays for (and, heads only, the neurons)
        found = search(hs, ns, ch, cn, budget.keep * total - fixed)
        heads, neurons = found.heads, found.neurons
    else:  # scores on two scales: the same fraction of each, lowest first
        heads = ascending(hs)[:n_to_prune(1 - budget.keep, hs.size)]
        neurons = ascending(ns)[:n_to_prune(1 - budget.keep, ns.size)] if ns.size else []
    pruned_h, pruned_n, _ = _meet(one, budget, seq_len, hs, ns, list(heads), list(neurons))
    if one.kept_fraction(pruned_h, budget.kind, seq_len, neurons=pruned_n) > budget.keep * (1 + 1e-12):
        raise SynpruneError(f"budget {budget.kind}:{budget.keep:g} cannot be met in a layer with these units; "
                            "use a larger fraction (or --units heads,neurons)")
    return [u for _, u in pruned_h], [u for _, u in pruned_n]
