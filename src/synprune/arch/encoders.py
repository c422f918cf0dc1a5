"""Shared pieces of the post-LayerNorm encoder families (BERT, RoBERTa, ELECTRA, MPNet, DistilBERT):
multi-head attention with one key/value head per query head, and an emptied attention block that leaves the
residual path."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Adapter, AttentionHandles


class ResidualLayerNormAttention(nn.Module):
    """Stands in for a BERT/RoBERTa/ELECTRA attention block with no heads: LayerNorm(hidden_states).

    The LayerNorm sits at `output.LayerNorm` as in the original block, so state-dict keys do not change.
    Returns `(output, None)` like the original block (output, attention weights).
    """

    def __init__(self, layer_norm: nn.LayerNorm):
        super().__init__()
        self.output = nn.Module()
        self.output.LayerNorm = layer_norm

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return self.output.LayerNorm(hidden_states), None


class ZeroAttention(nn.Module):
    """Stands in for an attention module whose layer adds its output to the residual stream itself
    (DistilBERT: `sa_layer_norm(attention + hidden_states)`): with no heads it adds nothing."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


class EncoderAdapter(Adapter):
    """Multi-head attention: every query head has its own key/value head (n_kv = n_heads)."""

    heads_attrs: tuple[str, ...] = ()  # attributes holding the head count on the attention module
    head_size_attrs: tuple[str, ...] = ()  # attributes holding heads x head_dim

    def set_head_counts(self, h: AttentionHandles, n_q: int, n_kv: int) -> None:
        for attr in self.heads_attrs:
            setattr(h.module, attr, n_q)
        for attr in self.head_size_attrs:
            setattr(h.module, attr, n_q * h.head_dim)
