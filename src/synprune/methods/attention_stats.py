"""`entropy` and `confidence`: how spread out or how peaked a head's attention rows are.

A head whose rows are near uniform (high entropy) or never commit to one token (low confidence, the mean
maximum weight of Voita et al. 2019) is taken to do little. Both come from one scan over the calibration
items: `AttentionStats` keeps running sums per head, over real (non-padding) query tokens, with each row
renormalised over the real key tokens.
"""
from __future__ import annotations

import torch

from synprune.calibrate.attention import AttentionBatch
from . import HeadScores, order_by, register



class AttentionStats:
    """Running sums of row entropy (nats) and row maximum per head, over real query rows of sub-token attention."""

    per_layer = True

    def __init__(self, grid: tuple[int, int]):
        self.entropy_sum = torch.zeros(grid, dtype=torch.float64)
        self.max_sum = torch.zeros(grid, dtype=torch.float64)
        self.rows = 0
        self.padding_mass = 0.0  # largest attention mass a real row put on padding keys (should be ~0)

    def update(self, batch: AttentionBatch) -> None:
        real = batch.token_mask  # (B, T)
        keys = real[:, None, None, :].float()  # (B, 1, 1, T): masks key columns of (B, H, T, T)
        queries = real[:, None, :].float()  # (B, 1, T): masks query rows of (B, H, T)
        first = batch.rows.start or 0
        for i in range(batch.token_attn.shape[1]):  # one layer at a time keeps the temporaries small
            layer = first + i
            a = batch.token_attn[:, i].float()  # (B, H, T, T)
            on_real = (a * keys).sum(-1)  # (B, H, T)
            on_padding = (a * (1 - keys)).sum(-1)
            self.padding_mass = max(self.padding_mass, float((on_padding * queries).max()))
            p = a * keys / on_real.clamp(min=1e-12)[..., None]
            entropy = -torch.special.xlogy(p, p).sum(-1)
            self.entropy_sum[layer] += (entropy * queries).sum(dim=(0, 2)).double()
            self.max_sum[layer] += (p.amax(-1) * queries).sum(dim=(0, 2)).double()
        if batch.count_items:
            self.rows += int(real.sum())

    @property
    def mean_entropy(self) -> torch.Tensor:
        return self.entropy_sum / max(self.rows, 1)

    @property
    def mean_max(self) -> torch.Tensor:
        return self.max_sum / max(self.rows, 1)

    def details(self) -> dict:
        return {"query_rows": self.rows, "padding_mass_max": self.padding_mass}


def attention_stats(ctx) -> AttentionStats:
    """The shared scan: entropy and confidence computed together (with SAP's thresholds), once per calibration context."""
    return ctx.attention_summary()[1]


@register("entropy", needs=("attention",))
def entropy(ctx, cfg) -> HeadScores:
    stats = attention_stats(ctx)
    scores = stats.mean_entropy.numpy()
    return HeadScores(scores, order_by(scores, highest_first=True), {"scores": "mean row entropy (nats)", **stats.details()})


@register("confidence", needs=("attention",))
def confidence(ctx, cfg) -> HeadScores:
    stats = attention_stats(ctx)
    scores = stats.mean_max.numpy()
    return HeadScores(scores, order_by(scores, highest_first=False), {"scores": "mean row maximum", **stats.details()})
