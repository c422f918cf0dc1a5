"""Turn a method's order into the set of heads to prune under a budget, with SPEC's layer rule."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

Head = tuple[int, int]


def n_to_prune(sparsity: float, n_heads: int) -> int:
    """round(s * N), halves rounded up (Python's round() would round 0.5 to even)."""
    return int(math.floor(sparsity * n_heads + 0.5))


@dataclass(frozen=True)
class Selection:
    pruned: list[Head]
    removed_layers: list[int]


def select(order: Sequence[Head], grid: tuple[int, int], n_prune: int, layer_fraction: float = 1.0) -> Selection:
    """Walk `order`, pruning heads until `n_prune` are gone.

    When a layer's pruned heads reach `layer_fraction` of its heads, the rest of the layer goes too and
    counts against the budget. A head whose layer removal would overshoot the budget is skipped.
    """
    layers, heads = grid
    limit = max(1, math.ceil(layer_fraction * heads - 1e-9))
    pruned: list[Head] = []
    chosen: set[Head] = set()
    per_layer = [0] * layers
    removed: list[int] = []
    for l, h in order:
        if len(pruned) >= n_prune:
            break
        if (l, h) in chosen:
            continue
        if per_layer[l] + 1 >= limit:
            rest = [(l, j) for j in range(heads) if (l, j) not in chosen]
            if len(pruned) + len(rest) > n_prune:
                continue
            new = rest
            removed.append(l)
        else:
            new = [(l, h)]
        pruned += new
        chosen.update(new)
        per_layer[l] += len(new)
    return Selection(sorted(pruned), sorted(removed))
