"""GPT-2: Conv1D projections (weights stored (in, out)), fused `c_attn` ([q | k | v]), `mlp.c_fc`/`mlp.c_proj`,
layers at `transformer.h`, multi-head attention (a key/value head per query head)."""
from __future__ import annotations

from typing import Any

from torch import nn

from . import register
from .base import AttentionHandles, FFNHandles
from .decoders import DecoderAdapter


class GPT2(DecoderAdapter):
    attention_attr = "attn"
    heads_config_attr, kv_config_attr, intermediate_config_attr = "n_head", None, "n_inner"
    head_dim_in_config = False  # head_dim = n_embd // n_head

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.base_model.h)

    def attention(self, i: int, layer: nn.Module) -> AttentionHandles:
        a = layer.attn
        n = int(a.config.num_attention_heads)
        return AttentionHandles(i, a, a.c_attn, a.c_attn, a.c_attn, a.c_proj, a.head_dim, n, n, layer, "attn")

    def ffn(self, i: int, layer: nn.Module) -> FFNHandles:
        m = layer.mlp
        return FFNHandles.of(i, m, (m.c_fc,), m.c_proj)

    def biases(self, cfg: Any) -> dict:
        return dict(n_up=1, qkv_bias=True, out_bias=True, up_bias=True, down_bias=True)

    def set_head_counts(self, h: AttentionHandles, n_q: int, n_kv: int) -> None:
        h.module.num_heads = n_q
        h.module.split_size = n_q * h.head_dim  # c_attn's output is split into q, k, v of this width

    def tiny_config(self) -> Any:
        import transformers

        return transformers.GPT2Config(n_embd=32, n_layer=3, n_head=4, n_inner=37, vocab_size=100, n_positions=64,
                                       bos_token_id=0, eos_token_id=0)


register(GPT2("gpt2", ("gpt2",), "GPT2Config"))
