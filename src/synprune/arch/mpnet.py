"""MPNet: BERT-like layers, attention `attention.attn.{q,k,v,o}`, and one relative position bias of shape
(batch, heads, T, T) computed for all layers, which each sliced layer must index by its kept heads."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import register
from .base import AttentionHandles, FFNHandles
from .bert import TINY
from .encoders import EncoderAdapter
from .standalone import position_bias_hook


class EmptyMPNetAttention(nn.Module):
    """Stands in for an MPNet attention block with no heads; MPNet returns a tuple that grows with attentions."""

    def __init__(self, layer_norm: nn.LayerNorm):
        super().__init__()
        self.LayerNorm = layer_norm

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None, position_bias: Any = None,
                output_attentions: bool = False, **kwargs: Any) -> tuple:
        out = self.LayerNorm(hidden_states)
        return (out, None) if output_attentions else (out,)


class MPNet(EncoderAdapter):
    family = "mpnet"
    model_types = ("mpnet",)
    heads_attrs = ("num_attention_heads",)
    head_size_attrs = ("all_head_size",)  # read by MPNetSelfAttention.forward to reshape the context

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.base_model.encoder.layer)

    def attention(self, i: int, layer: nn.Module) -> AttentionHandles:
        sa = layer.attention.attn
        n = int(getattr(sa, "synprune_n_heads", sa.num_attention_heads))
        return AttentionHandles(i, sa, sa.q, sa.k, sa.v, sa.o, sa.attention_head_size, n, n, layer, "attention")

    def ffn(self, i: int, layer: nn.Module) -> FFNHandles:
        return FFNHandles.of(i, layer.intermediate, (layer.intermediate.dense,), layer.output.dense)

    def set_head_counts(self, h: AttentionHandles, n_q: int, n_kv: int) -> None:
        super().set_head_counts(h, n_q, n_kv)
        if not getattr(h.module, "_synprune_bias_hook", False):
            h.module.register_forward_pre_hook(position_bias_hook, with_kwargs=True)
            h.module._synprune_bias_hook = True

    def empty_attention(self, h: AttentionHandles) -> nn.Module:
        return EmptyMPNetAttention(h.block_parent.attention.LayerNorm)

    def tiny_config(self) -> Any:
        import transformers

        return transformers.MPNetConfig(**TINY, pad_token_id=1)


register(MPNet())
