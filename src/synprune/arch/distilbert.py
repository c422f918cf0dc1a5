"""DistilBERT: attention `q_lin/k_lin/v_lin/out_lin`, feed-forward `ffn.lin1/lin2`; the layer adds the attention
output to the residual itself, so an emptied block returns zeros."""
from __future__ import annotations

from typing import Any

from torch import nn

from . import register
from .base import AttentionHandles, FFNHandles
from .encoders import EncoderAdapter, ZeroAttention


class DistilBert(EncoderAdapter):
    family = "distilbert"
    model_types = ("distilbert",)
    heads_config_attr, intermediate_config_attr = "n_heads", "hidden_dim"
    heads_attrs = ("n_heads",)  # `dim` is the model width (out_lin's output), not heads x head_dim

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.base_model.transformer.layer)

    def attention(self, i: int, layer: nn.Module) -> AttentionHandles:
        sa = layer.attention
        n = int(getattr(sa, "synprune_n_heads", sa.n_heads))
        return AttentionHandles(i, sa, sa.q_lin, sa.k_lin, sa.v_lin, sa.out_lin, sa.attention_head_size, n, n,
                                layer, "attention")

    def ffn(self, i: int, layer: nn.Module) -> FFNHandles:
        f = layer.ffn
        return FFNHandles.of(i, f, (f.lin1,), f.lin2)

    def empty_attention(self, h: AttentionHandles) -> nn.Module:
        return ZeroAttention()

    def tiny_config(self) -> Any:
        import transformers

        return transformers.DistilBertConfig(dim=32, n_layers=3, n_heads=4, hidden_dim=37, vocab_size=100,
                                             max_position_embeddings=64)


register(DistilBert())
