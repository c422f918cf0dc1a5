"""`attn-drop`: drop whole attention blocks whose output hardly changes their input (He et al. 2024, "What
matters in transformers? Not all attention is needed").

A block's importance is 1 - cos(X, Y), the cosine similarity between the hidden states entering the attention
block (X) and the residual stream after it (Y), averaged over the calibration tokens. For pre-norm models
(decoders) Y = X + the attention module's output; for post-norm encoders Y is the attention block's output
(residual and LayerNorm included). Every head of a layer takes its block's importance, so the least
important blocks go first and whole; within the block a budget cuts through, heads go by `magnitude` (the
norm of their output-projection slice), smallest first.
"""
from __future__ import annotations

import numpy as np
import torch

from ..arch import attention_handles, get_adapter
from synprune.model.activations import model_inputs
from . import HeadScores, order_by, register
from .magnitude import out_proj_norms


def block_importance(ctx) -> np.ndarray:
    """(layers,) mean over calibration tokens of 1 - cos(attention block input, residual stream after it)."""
    model = ctx.tm.model
    pre_norm = get_adapter(model).pre_norm
    L, _ = ctx.tm.grid
    total, count = np.zeros(L), np.zeros(L)
    inputs, handles, real = {}, [], {}

    def layer_input(layer: int):
        def hook(module, args, kwargs):
            inputs[layer] = args[0] if args else kwargs["hidden_states"]
        return hook

    def block_output(layer: int):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            keep = real["mask"].to(out.device)
            x = inputs.pop(layer)[keep].double()
            y = x + out[keep].double() if pre_norm else out[keep].double()
            total[layer] += float((1 - torch.nn.functional.cosine_similarity(x, y, dim=-1)).sum())
            count[layer] += x.shape[0]
        return hook

    for h in attention_handles(model):
        handles.append(h.block_parent.register_forward_pre_hook(layer_input(h.layer), with_kwargs=True))
        handles.append(getattr(h.block_parent, h.block_attr).register_forward_hook(block_output(h.layer)))
    try:
        with torch.no_grad():
            for batch in model_inputs(ctx.tm, ctx.prepared.batches):
                real["mask"] = batch["attention_mask"].bool()
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return np.where(count > 0, total / np.maximum(count, 1), np.inf)  # a block already gone: never chosen again


@register("attn-drop", needs=("activations",))
def attn_drop(ctx, cfg) -> HeadScores:
    importance = ctx.memo("block-importance", lambda: block_importance(ctx))
    L, H = ctx.tm.grid
    scores = np.repeat(importance[:, None], H, axis=1)
    order = order_by(scores, highest_first=False, tiebreak=out_proj_norms(ctx.tm.model, ctx.tm.grid))
    return HeadScores(scores, order, {"scores": "1 - cos(block input, residual after the block), per layer",
                                      "block_importance": importance.tolist()})
