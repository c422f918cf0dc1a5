"""`flap`: FLAP's fluctuation metric with bias compensation (An et al. 2024, "Fluctuation-based Adaptive
Structured Pruning for Large Language Models"), for query heads.

A channel j of the attention output projection's input whose value hardly moves across tokens carries
little information: replacing it by its mean costs little, and the mean's contribution W[:, j] * mean_j can be
folded into the projection's bias. FLAP scores channel j by its sample variance over the calibration tokens
times the squared norm of its weight column, Var(x_j) * ||W[:, j]||^2; a head's score is the sum over its
channels. As in FLAP's adaptive structure search, each layer's head scores are standardised (mean 0, sd 1
within the layer) before all heads are ranked together, lowest first.

Bias compensation: the pruned model is evaluated with each pruned head's input replaced by its calibration
mean, i.e. the output projection gains the bias W[:, pruned] @ mean[pruned] (`HeadScores.compensate`).
Candidate Filtering (`flap+cf`) scores its candidates without the compensation; the exported model (which has
no such bias) neither: `result.json` records this under details.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..arch import attention_handles, is_conv1d
from . import Head, HeadScores, order_by, register
from ._capture import InputState, each_input, real_tokens


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

    def mean(self, layer: int) -> torch.Tensor:
        return self.sum[layer] / max(self.n[layer], 1)

    def variance(self, layer: int) -> torch.Tensor:
        """Sample variance (n - 1), as FLAP uses."""
        n = max(self.n[layer], 2)
        return ((self.sq[layer] - self.sum[layer] ** 2 / n) / (n - 1)).clamp(min=0)


def _weight_columns(proj: nn.Module) -> torch.Tensor:
    """(out, in) view of a projection's weight (Conv1D stores (in, out))."""
    w = proj.weight.detach()
    return (w.T if is_conv1d(proj) else w).double().cpu()


def channel_moments(ctx) -> ChannelMoments:
    """One pass over the calibration batches recording every layer's output-projection input."""
    moments, state = ChannelMoments(), InputState()
    handles = []

    def hook(layer: int):
        def record(module, args):
            moments.add(layer, real_tokens(args[0], state))
        return record

    for h in attention_handles(ctx.tm.model):
        handles.append(h.out_proj.register_forward_pre_hook(hook(h.layer)))
    try:
        for _ in each_input(ctx, state, "FLAP: fluctuation"):
            pass
    finally:
        for handle in handles:
            handle.remove()
    return moments


def standardise(scores: np.ndarray) -> np.ndarray:
    """Each layer's scores to mean 0 and sample sd 1 (a layer whose heads all score alike: all 0)."""
    sd = scores.std(axis=1, ddof=1, keepdims=True)
    return (scores - scores.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)


class BiasCompensation:
    """While active, adds W[:, pruned channels] @ mean[pruned channels] to each output projection's output."""

    def __init__(self, model: nn.Module, means: dict[int, torch.Tensor]):
        self.model, self.means = model, means

    @contextlib.contextmanager
    def __call__(self, pruned: Sequence[Head]) -> Iterator[None]:
        by_layer: dict[int, list[int]] = {}
        for layer, head in pruned:
            by_layer.setdefault(int(layer), []).append(int(head))
        handles = []
        for h in attention_handles(self.model):
            gone = [q for q in by_layer.get(h.layer, []) if q in h.kept_heads]
            if not gone:
                continue
            cols = torch.tensor([h.kept_heads.index(q) * h.head_dim + d for q in gone for d in range(h.head_dim)])
            original = torch.tensor([q * h.head_dim + d for q in gone for d in range(h.head_dim)])
            bias = _weight_columns(h.out_proj)[:, cols] @ self.means[h.layer][original]
            handles.append(h.out_proj.register_forward_hook(_add(bias)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _add(bias: torch.Tensor):
    def hook(module, args, output):
        return output + bias.to(dtype=output.dtype, device=output.device)
    return hook


@register("flap")
def flap(ctx, cfg) -> HeadScores:
    moments = ctx.memo("flap-moments", lambda: channel_moments(ctx))
    L, H = ctx.tm.grid
    raw = np.zeros((L, H))
    means: dict[int, torch.Tensor] = {}
    for h in attention_handles(ctx.tm.model):
        w2 = (_weight_columns(h.out_proj) ** 2).sum(0)  # (kept heads x head_dim,)
        per_channel = (moments.variance(h.layer) * w2).reshape(-1, h.head_dim).sum(-1).numpy()
        raw[h.layer, h.kept_heads] = per_channel
        mean = torch.zeros(H * h.head_dim, dtype=torch.float64)
        kept_cols = torch.tensor([q * h.head_dim + d for q in h.kept_heads for d in range(h.head_dim)])
        mean[kept_cols] = moments.mean(h.layer)
        means[h.layer] = mean
    scores = standardise(raw)
    return HeadScores(scores, order_by(scores, highest_first=False), {
        "scores": "sum over the head's channels of Var(x_j) * ||W_o[:, j]||^2, standardised within each layer",
        "raw": raw.tolist(), "tokens": int(sum(moments.n.values()) // max(len(moments.n), 1)),
        "bias_compensation": "in evaluation only (not in CF's checks or the exported model)"},
        compensate=BiasCompensation(ctx.tm.model, means))
