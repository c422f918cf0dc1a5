"""`recon`: width pruning of decoders (and encoders) by layer-wise reconstruction. Three steps:

1. how many units each layer loses: Kwon et al.'s search over the Fisher diagonals of heads and neurons
   (`fisher`'s scores; the next-token loss on text) under the budget (`allocation="fisher"`), or the same
   number in every layer (`allocation="uniform"`, heads and neurons split by `head_ratio`);
2. which ones: inside each layer, in order, greedy structured OBS on the output projection's calibration
   inputs in the already-pruned model (`synprune.repair.refit.layerwise`), i.e. the units whose removal,
   with the rest re-fitted, raises that layer's reconstruction error least;
3. the repair: the kept units' output-projection weights re-fitted by ridge least squares to the dense
   model's projection output (`--repair refit`, which this method always runs).

This module holds the options and the head scores (the Fisher's, which make the allocation); the walk of
steps 2-3 runs after selection (`synprune.repair.refit.recon_choose`), since it needs the budgeted counts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import SynpruneError
from . import HeadScores, get_method, register

ALLOCATIONS = ("fisher", "uniform")


@dataclass(frozen=True)
class ReconOptions:
    """allocation: how many units each layer loses (see the module doc). head_ratio (uniform only): fraction of
    query heads pruned over fraction of neurons pruned. rechoose_heads: OBS re-chooses a layer's heads too (else
    the allocation's heads stay, and only the neurons are re-chosen). ridge: pull of the re-fit towards the
    original weights (relative to the mean input energy). min_heads: heads every layer keeps. drift: the re-fit
    targets also cancel the pruned residual stream's drift from the dense one (`RefitOptions.drift`)."""

    allocation: str = "fisher"
    head_ratio: float = 1.0
    rechoose_heads: bool = False
    ridge: float = 1e-2
    min_heads: int = 1
    drift: bool = True

    def validate(self) -> "ReconOptions":
        if self.allocation not in ALLOCATIONS:
            raise SynpruneError(f"recon allocation={self.allocation!r}: use one of {', '.join(ALLOCATIONS)}")
        if self.head_ratio < 0 or self.ridge <= 0 or self.min_heads < 1:
            raise SynpruneError("recon: head_ratio >= 0, ridge > 0 and min_heads >= 1")
        return self

    def label(self) -> str:
        base = asdict(ReconOptions())
        return ",".join(f"{k}={v}" for k, v in asdict(self).items() if base[k] != v) or "default"


RECON = ReconOptions()  # the recipe benchmarks/results/decoder_width.md measured best


@register("recon", needs=("gradients", "activations", "labels"))
def recon(ctx, cfg) -> HeadScores:
    base = get_method("fisher")(ctx, cfg)
    return HeadScores(base.scores, base.order, {**base.details, "recon": RECON.label(),
                                                "note": "head scores: the Fisher's, for the allocation; each layer's "
                                                        "units are then chosen by OBS in the re-fitting walk"})
