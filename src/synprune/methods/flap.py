"""`flap`: FLAP's fluctuation metric with bias compensation (An et al. 2024, "Fluctuation-based Adaptive
Structured Pruning for Large Language Models"), for query heads.

A channel j of the attention output projection's input whose value hardly moves across tokens carries
little information: replacing it by its mean costs little, and the mean's contribution W[:, j] * mean_j can be
folded into the projection's bias. FLAP scores channel j by its sample variance over the calibration tokens
times the squared norm of its weight column, Var(x_j) * ||W[:, j]||^2; a head's score is the sum over its
channels. As in FLAP's adaptive structure search, each layer's head scores are standardised (mean 0, sd 1
within the layer) before all heads are ranked together, lowest first.

FLAP's bias compensation (each pruned head's input replaced by its calibration mean, i.e. the output
projection gains the bias W[:, pruned] @ mean[pruned]) is the repair `--repair bias` (synprune.repair), which
any method can use; FLAP as published is `--method flap --repair bias`.
"""
from __future__ import annotations

import numpy as np
import torch

from synprune.model.activations import Tap, model_inputs
from ..arch import attention_handles, weight_rows
from . import HeadScores, order_by, register


class ChannelMoments:
    """Running count, sum and sum of squares of every output-projection input channel, per layer."""

    def __init__(self):
        self.n: dict[int, int] = {}
        self.sum: dict[int, torch.Tensor] = {}
        self.sq: dict[int, torch.Tensor] = {}

    def add(self, layer: int, rows: torch.Tensor) -> None:
        if layer not in self.n:
            self.n[layer], self.sum[layer], self.sq[layer] = 0, torch.zeros(rows.shape[-1], dtype=torch.float64), \
                torch.zeros(rows.shape[-1], dtype=torch.float64)
        self.n[layer] += rows.shape[0]
        self.sum[layer] += rows.sum(0).cpu()
        self.sq[layer] += (rows * rows).sum(0).cpu()

    def variance(self, layer: int) -> torch.Tensor:
        """Sample variance (n - 1), as FLAP uses."""
        n = max(self.n[layer], 2)
        return ((self.sq[layer] - self.sum[layer] ** 2 / n) / (n - 1)).clamp(min=0)


def channel_moments(ctx) -> ChannelMoments:
    """One pass over the calibration batches recording every layer's output-projection input (real tokens)."""
    moments = ChannelMoments()
    with Tap({h.layer: h.out_proj for h in attention_handles(ctx.tm.model)}, moments.add) as tap:
        for inputs in model_inputs(ctx.tm, ctx.prepared.batches):
            tap.run(ctx.tm.model, inputs)
    return moments


def standardise(scores: np.ndarray) -> np.ndarray:
    """Each layer's scores to mean 0 and sample sd 1 (a layer whose heads all score alike: all 0)."""
    sd = scores.std(axis=1, ddof=1, keepdims=True)
    return (scores - scores.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)


@register("flap", needs=("activations",))
def flap(ctx, cfg) -> HeadScores:
    moments = ctx.memo("flap-moments", lambda: channel_moments(ctx))
    L, H = ctx.tm.grid
    raw = np.zeros((L, H))
    for h in attention_handles(ctx.tm.model):
        w2 = (weight_rows(h.out_proj).cpu() ** 2).sum(0)  # (kept heads x head_dim,)
        raw[h.layer, h.kept_heads] = (moments.variance(h.layer) * w2).reshape(-1, h.head_dim).sum(-1).numpy()
    scores = standardise(raw)
    return HeadScores(scores, order_by(scores, highest_first=False), {
        "scores": "sum over the head's channels of Var(x_j) * ||W_o[:, j]||^2, standardised within each layer",
        "raw": raw.tolist(), "tokens": int(sum(moments.n.values()) // max(len(moments.n), 1))})
