"""Shared pieces of the pre-norm decoder families (Llama, Mistral, Qwen, Gemma, Phi-3, GPT-2): grouped-query
attention bookkeeping and an emptied attention block that keeps the KV cache's length right."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import gqa
from .base import Adapter, AttentionHandles, FFNHandles


class EmptyDecoderAttention(nn.Module):
    """Stands in for a decoder attention block with no heads: it adds nothing to the residual stream.

    transformers reads the cache's length from layer 0 (`cache.get_seq_length()`), so a removed block still
    appends a one-wide placeholder (batch x 1 x tokens x 1: 2 x 4 bytes a token) to its cache layer.
    """

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        cache = kwargs.get("cache", kwargs.get("past_key_values", kwargs.get("layer_past")))
        if cache is not None and hasattr(cache, "update"):
            b, t = hidden_states.shape[:2]
            stub = hidden_states.new_zeros(b, 1, t, 1)
            cache.update(stub, stub, self.layer_idx)
        return torch.zeros_like(hidden_states), None


def kv_index(h: AttentionHandles) -> tuple[torch.Tensor | None, int]:
    """For the kept query heads, the position of each one's group among the kept groups; (None, n) when every
    kept group serves the same number n of consecutive kept heads (then `repeat_kv(x, n)` is exact)."""
    kept_kv = h.kept_kv
    pos = [kept_kv.index(h.group_of(q)) for q in h.kept_heads]
    counts = [pos.count(g) for g in range(len(kept_kv))]
    n = counts[0] if counts else 1
    if all(c == n for c in counts) and pos == sorted(pos):
        return None, n
    return torch.tensor(pos, dtype=torch.long), 1


class DecoderAdapter(Adapter):
    """q_proj/k_proj/v_proj/o_proj attention at `self_attn`, gate/up/down MLP at `mlp`, layers at base_model.layers."""

    causal = True
    pre_norm = True
    attention_attr = "self_attn"
    config_class: str
    tiny_extra: dict = {}
    count_overrides: bool = False  # the forward reads head counts from the config (Phi-3)
    kv_config_attr = "num_key_value_heads"
    head_dim_in_config = True  # the attention reads config.head_dim (Llama, Mistral, Qwen2/3, Gemma 1-3, Phi-3)

    def __init__(self, family: str, model_types: tuple[str, ...], config_class: str, *,
                 bias_switches: dict[str, str] | None = None, sublayer_output_norm: bool = False, **tiny_extra: Any):
        self.family, self.model_types, self.config_class, self.tiny_extra = family, model_types, config_class, tiny_extra
        self.bias_switches = bias_switches or {}
        self.sublayer_output_norm = sublayer_output_norm

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.base_model.layers)

    def _counts(self, module: nn.Module) -> tuple[int, int]:
        cfg = gqa.base_config(module)
        return int(cfg.num_attention_heads), int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)

    def qkv(self, a: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
        """The q, k and v projections (the same module three times where they are fused)."""
        return a.q_proj, a.k_proj, a.v_proj

    def attention(self, i: int, layer: nn.Module) -> AttentionHandles:
        a = layer.self_attn
        n, kv = self._counts(a)
        return AttentionHandles(i, a, *self.qkv(a), a.o_proj, a.head_dim, n, kv, layer, "self_attn")

    def ffn(self, i: int, layer: nn.Module) -> FFNHandles:
        m = layer.mlp
        return FFNHandles.of(i, m, (m.gate_proj, m.up_proj), m.down_proj)

    def biases(self, cfg: Any) -> dict:
        attn_bias = bool(getattr(cfg, "attention_bias", False))
        mlp_bias = bool(getattr(cfg, "mlp_bias", False))
        return dict(n_up=2, qkv_bias=attn_bias, out_bias=attn_bias, up_bias=mlp_bias, down_bias=mlp_bias)

    def set_head_counts(self, h: AttentionHandles, n_q: int, n_kv: int) -> None:
        index, n = kv_index(h)
        h.module.num_key_value_groups = n
        if hasattr(h.module, "num_key_value_heads"):
            h.module.num_key_value_heads = n_kv
        if hasattr(h.module, "num_heads"):
            h.module.num_heads = n_q
        overrides = {"num_attention_heads": n_q, "num_key_value_heads": n_kv} if self.count_overrides else {}
        gqa.configure(h.module, overrides, index)

    def empty_attention(self, h: AttentionHandles) -> nn.Module:
        return EmptyDecoderAttention(h.layer)

    def tiny_config(self) -> Any:
        import transformers

        sizes = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=37, vocab_size=100, max_position_embeddings=64, head_dim=8)
        return getattr(transformers, self.config_class)(**{**sizes, **self.tiny_extra})
