"""Candidate Filtering: re-check the top of a method's ranking against the task metric."""
from __future__ import annotations

from dataclasses import dataclass

from synprune.errors import SynpruneError


@dataclass(frozen=True)
class CFOptions:
    """`--cf` (`+cf` on a method), `--pool-ratio` (default min(1, sparsity + 0.25)), `--tolerance` (a ratio of the
    dense metric) or `--tolerance-abs` (an absolute drop)."""

    cf: bool = False
    pool_ratio: float | None = None
    tolerance: float = 0.95
    tolerance_abs: float | None = None

    def validate(self) -> "CFOptions":
        if self.pool_ratio is not None and not 0 < self.pool_ratio <= 1:
            raise SynpruneError(f"--pool-ratio {self.pool_ratio} must be in (0, 1]")
        if not 0 < self.tolerance <= 1.5:
            raise SynpruneError(f"--tolerance {self.tolerance} must be a ratio of the dense metric, e.g. 0.95")
        if self.tolerance_abs is not None and self.tolerance_abs < 0:
            raise SynpruneError(f"--tolerance-abs {self.tolerance_abs} must be a non-negative drop of the metric, e.g. 1.0")
        return self
