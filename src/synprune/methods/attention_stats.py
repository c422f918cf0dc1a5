"""`entropy` and `confidence`: how spread out or how peaked a head's attention rows are.

A head whose rows are near uniform (high entropy) or never commit to one token (low confidence, the mean
maximum weight of Voita et al. 2019) is taken to do little. Both come from one scan over the calibration
items: `AttentionStats` keeps running sums per head, over real (non-padding) query tokens, with each row
renormalised over the real key tokens.
"""
from __future__ import annotations

from synprune.calibrate.summary import AttentionStats
from . import HeadScores, order_by, register


def attention_stats(ctx) -> AttentionStats:
    """The shared scan: entropy and confidence computed together (with SAP's thresholds), once per calibration context."""
    return ctx.attention_summary()[1]


@register("entropy", needs=("parser", "attention"))  # the shared scan reads word-aligned items
def entropy(ctx, cfg) -> HeadScores:
    stats = attention_stats(ctx)
    scores = stats.mean_entropy.numpy()
    return HeadScores(scores, order_by(scores, highest_first=True), {"scores": "mean row entropy (nats)", **stats.details()})


@register("confidence", needs=("parser", "attention"))
def confidence(ctx, cfg) -> HeadScores:
    stats = attention_stats(ctx)
    scores = stats.mean_max.numpy()
    return HeadScores(scores, order_by(scores, highest_first=False), {"scores": "mean row maximum", **stats.details()})
