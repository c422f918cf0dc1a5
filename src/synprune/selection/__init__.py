"""Selection: a method's order and the budget -> the units to prune (heads, KV groups, neurons)."""
from __future__ import annotations

from dataclasses import dataclass

from synprune.errors import SynpruneError

UNITS = ("heads", "kv-groups", "heads,neurons")


@dataclass(frozen=True)
class SelectionOptions:
    """How many units go and which kind: `--sparsity` (the fraction of heads), `--layer-fraction` (the most of a
    layer's heads one selection may take), `--budget KIND:F`, `--units`, and (budgeted neuron search) Kwon et
    al.'s mask rearrangement."""

    sparsity: float = 0.5
    layer_fraction: float = 1.0
    budget: str | None = None
    units: str = "heads"  # what is pruned: "heads" (query heads), "kv-groups" (whole key/value groups), "heads,neurons"
    rearrange: bool = True

    def validate(self) -> "SelectionOptions":
        if not 0 <= self.sparsity < 1:
            raise SynpruneError(f"sparsity {self.sparsity} is outside [0, 1): it is the fraction of heads to remove")
        if not 0 < self.layer_fraction <= 1:
            raise SynpruneError(f"--layer-fraction {self.layer_fraction} must be in (0, 1]")
        if self.units not in UNITS:
            raise SynpruneError(f"--units {self.units!r}: use one of {', '.join(UNITS)}")
        if self.budget is not None:
            from synprune.selection.budget import parse_budget

            parse_budget(self.budget)
        return self
