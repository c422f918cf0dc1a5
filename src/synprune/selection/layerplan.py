"""How many query heads and feed-forward neurons each layer loses under a budget: the plan of `--method recon`
(`selection.layerplan.plan_for_budget`), which then chooses the units inside each layer itself.

The budget is split between heads and neurons by `head_ratio`: the fraction of query heads pruned is
head_ratio times the fraction of neurons pruned (0: neurons only). Every layer loses the same number of units
(to within one; layers sorted by index take the remainders), never all of its heads. `params:F` keeps F of
the model's TOTAL parameters, embeddings included (how users count a model's size; the embedding is never
pruned, so the whole cut lands on the attention and feed-forward weights); `flops:F` keeps F of the attention
+ feed-forward multiply-accumulates at the calibration data's mean length, as elsewhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from synprune.errors import SynpruneError
from synprune.selection.budget import Budget, CostModel, total_parameters


@dataclass
class LayerPlan:
    """Units each layer loses: query heads and neurons, per layer index."""

    heads: list[int]
    neurons: list[int]

    @property
    def n_heads(self) -> int:
        return sum(self.heads)

    @property
    def n_neurons(self) -> int:
        return sum(self.neurons)


def _spread(n: int, layers: int) -> list[int]:
    return [n // layers + (1 if l < n % layers else 0) for l in range(layers)]


def plan_for_budget(model: nn.Module, budget: Budget, head_ratio: float = 1.0, seq_len: float | None = None,
                    min_heads: int = 1) -> LayerPlan:
    """The per-layer plan that removes what the budget asks (see the module doc)."""
    cost = CostModel.from_model(model)
    L, H, N = cost.n_layers, cost.n_heads, cost.intermediate
    if budget.kind == "params":
        cut = (1 - budget.keep) * total_parameters(model)
    elif budget.kind == "flops":
        cut = (1 - budget.keep) * cost.total("flops", seq_len)
    else:
        raise SynpruneError("--method recon needs --budget params:F or flops:F")
    ch, cn = cost.query_head_cost(budget.kind, seq_len), cost.neuron_cost(budget.kind, seq_len)
    max_heads = L * max(H - min_heads, 0)
    frac = cut / (L * (head_ratio * H * ch + N * cn))  # fraction of neurons pruned
    n_heads = min(round(head_ratio * frac * H * L), max_heads)
    n_neurons = math.ceil(max(cut - n_heads * ch, 0) / cn)
    if n_neurons > L * (N - 1):
        raise SynpruneError(f"budget {budget.kind}:{budget.keep:g} asks to cut more than the attention and feed-forward "
                            "weights hold; use a larger fraction")
    return LayerPlan(_spread(n_heads, L), _spread(n_neurons, L))
