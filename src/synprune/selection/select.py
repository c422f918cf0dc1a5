"""Turn a method's order into the set of heads to prune under a budget, with SPEC's layer rule.

`Pruning` is the running state both plain selection and Candidate Filtering walk with, so the layer rule
and the budget are decided in one place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

Head = tuple[int, int]


def group_order(order: Sequence[Head], group_size: int) -> list[Head]:
    """Query heads grouped by key/value group: groups by the mean position of their heads in `order` (most
    prunable first; ties by layer and group), each group's heads together in their own order. Selecting a
    multiple of `group_size` heads from this order removes whole groups."""
    pos = {h: i for i, h in enumerate(order)}
    groups: dict[tuple[int, int], list[Head]] = {}
    for h in order:
        groups.setdefault((h[0], h[1] // group_size), []).append(h)
    ranked = sorted(groups, key=lambda g: (sum(pos[h] for h in groups[g]) / len(groups[g]), g))
    return [h for g in ranked for h in groups[g]]


def n_to_prune(sparsity: float, n_heads: int) -> int:
    """round(s * N), halves rounded up (Python's round() would round 0.5 to even)."""
    return int(math.floor(sparsity * n_heads + 0.5))


@dataclass(frozen=True)
class Selection:
    pruned: list[Head]
    removed_layers: list[int]
    fill: bool = False  # CF: the candidate pool ran out and the budget was filled by the method's order
    neurons: list[Head] = field(default_factory=list)  # pruned feed-forward neurons (--units heads,neurons)


@dataclass
class Pruning:
    """Heads removed so far under a budget of `n_prune` heads.

    When a layer's removed heads reach `layer_fraction` of its heads, the rest of the layer goes too (its
    whole attention block) and counts against the budget.
    """

    grid: tuple[int, int]
    n_prune: int
    layer_fraction: float = 1.0
    pruned: list[Head] = field(default_factory=list)
    removed_layers: list[int] = field(default_factory=list)

    @property
    def limit(self) -> int:
        """Removed heads of a layer at which its whole block goes."""
        return max(1, math.ceil(self.layer_fraction * self.grid[1] - 1e-9))

    @property
    def full(self) -> bool:
        return len(self.pruned) >= self.n_prune

    def expand(self, head: Head) -> list[Head]:
        """The heads that removing `head` takes out: itself, or the rest of its layer under the layer rule.

        Empty when the head is already gone or the removal would overshoot the budget.
        """
        layer = head[0]
        gone = set(self.pruned)
        if head in gone:
            return []
        if sum(1 for l, _ in gone if l == layer) + 1 >= self.limit:
            new = [(layer, j) for j in range(self.grid[1]) if (layer, j) not in gone]
        else:
            new = [head]
        return new if len(self.pruned) + len(new) <= self.n_prune else []

    def add(self, heads: Iterable[Head]) -> None:
        heads = list(heads)
        self.pruned += heads
        for layer in sorted({l for l, _ in heads}):
            if sum(1 for l, _ in self.pruned if l == layer) == self.grid[1]:
                self.removed_layers.append(layer)

    def selection(self, fill: bool = False) -> Selection:
        return Selection(sorted(self.pruned), sorted(self.removed_layers), fill)


def select(order: Sequence[Head], grid: tuple[int, int], n_prune: int, layer_fraction: float = 1.0) -> Selection:
    """Walk `order`, pruning heads until `n_prune` are gone.

    A head whose layer removal would overshoot the budget is skipped.
    """
    state = Pruning(grid, n_prune, layer_fraction)
    for head in order:
        if state.full:
            break
        state.add(state.expand(head))
    return state.selection()
