"""`random`: a uniform random order of all heads, the floor any scoring method has to beat.

The order depends only on `cfg.seed` (numpy Generator), so a sweep over seeds gives the mean and spread.
"""
from __future__ import annotations

import numpy as np

from . import HeadScores, order_by, register


@register("random", uses=("seed",))
def random_order(ctx, cfg) -> HeadScores:
    L, H = ctx.tm.grid
    rank = np.random.default_rng(cfg.seed).permutation(L * H).reshape(L, H).astype(float)
    return HeadScores(rank, order_by(rank, highest_first=False), {"seed": cfg.seed, "scores": "rank in the random order"})
