"""`magnitude`: a head whose slice of the attention output projection is small writes little into the residual
stream; smallest L2 norm first. Needs no data."""
from __future__ import annotations

import numpy as np
import torch

from ..arch import attention_handles
from synprune.devices import tensor
from synprune.model.masking import kept_heads
from . import HeadScores, order_by, register


def out_proj_norms(model: torch.nn.Module, grid: tuple[int, int]) -> np.ndarray:
    """(layers, heads) L2 norm of each head's input columns of the output projection; 0 for heads already removed."""
    norms = np.zeros(grid)
    for h in attention_handles(model):
        w = tensor(h.out_proj, "weight").detach().double()  # (hidden, kept_heads * head_dim)
        per_head = w.unflatten(1, (-1, h.head_dim)).pow(2).sum(dim=(0, 2)).sqrt()
        norms[h.layer, kept_heads(h)] = per_head.cpu().numpy()
    return norms


@register("magnitude")
def magnitude(ctx, cfg) -> HeadScores:
    norms = out_proj_norms(ctx.tm.model, ctx.tm.grid)
    return HeadScores(norms, order_by(norms, highest_first=False), {"scores": "L2 norm of the head's output-projection columns"})
