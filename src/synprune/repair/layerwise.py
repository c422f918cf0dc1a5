"""The repairs of one sliced decoder layer, for the layer-local recipe (synprune.run.stream): the same
mathematics as `ls` (repair/ls.py: Kwon et al.'s mask tuning, its options and held-out check) and `bias`
(repair/bias.py: FLAP's compensation), computed from one layer's activations and folded straight into its
(already sliced) weights, so the layer can be written and dropped.

- `bias`: the attention output projection gains W[:, pruned] @ mean(z[pruned]), the down projection
  W[:, pruned neurons] @ mean(x[pruned]), means over the dense layer's inputs (`pruned_bias`).
- `ls`: for each sublayer, the scales of the kept heads' (neurons') input columns that bring the sliced layer's
  projection output, run on the pruned model's hidden states, closest to the dense layer's on the dense
  model's states (`LSMoments` accumulates X^T X and X^T Y; `fit_scales` solves with ls.py's `_fit`).
"""
from __future__ import annotations

import torch
from torch import nn

from synprune.arch import weight_rows
from . import _scale_inputs
from .ls import LSOptions, _fit


def pruned_bias(dense_weight: torch.Tensor, mean: torch.Tensor, cols: list[int]) -> torch.Tensor:
    """FLAP's compensation vector: the dense projection's pruned input columns times their mean input."""
    if not cols:
        return torch.zeros(dense_weight.shape[0], dtype=torch.float64)
    return dense_weight[:, cols] @ mean[cols]


def add_bias(module: nn.Module, vector: torch.Tensor) -> None:
    """Add `vector` to a projection's bias (the family's bias switch was turned on before any layer was read)."""
    with torch.no_grad():
        module.bias.add_(vector.to(dtype=module.bias.dtype))


def held_out(n_batches: int, options: LSOptions) -> list[bool]:
    """Which calibration batches check each solve (every `holdout`-th, as ls.py)."""
    h = options.holdout
    return [h > 1 and n_batches >= h and i % h == h - 1 for i in range(n_batches)]


class LSMoments:
    """X^T X, X^T Y and the sums of one sublayer, over fitting and held-out batches (the layout ls.py's
    `_fit` reads)."""

    def __init__(self, width: int, hidden: int):
        def part():
            return {"xtx": torch.zeros(width, width, dtype=torch.float64), "xty": torch.zeros(width, hidden, dtype=torch.float64),
                    "sx": torch.zeros(width, dtype=torch.float64), "sy": torch.zeros(hidden, dtype=torch.float64), "n": 0}

        self.stats = {"fit": part(), "check": part()}

    def add(self, x: torch.Tensor, y: torch.Tensor, check: bool) -> None:
        s = self.stats["check" if check else "fit"]
        x, y = x.double(), y.double()
        s["xtx"] += x.t() @ x
        s["xty"] += x.t() @ y
        s["sx"] += x.sum(0)
        s["sy"] += y.sum(0)
        s["n"] += x.shape[0]


def fit_scales(module: nn.Module, moments: LSMoments, width: int, options: LSOptions, any_check: bool):
    """(scales per kept unit, bias vector or None), or why the solve is rejected; the units are all of
    `module`'s input columns in blocks of `width`."""
    W = weight_rows(module)
    return _fit(moments.stats, W, width, torch.ones(W.shape[1] // width, dtype=torch.float64), options, any_check)


def fold_scales(module: nn.Module, scales: torch.Tensor, width: int) -> None:
    with torch.no_grad():
        _scale_inputs(module, scales.repeat_interleave(width))
