"""Llama and the families with its exact module layout: Mistral (sliding window), Qwen2 (q/k/v biases),
Qwen3 (per-head q/k RMSNorm, which acts on the head dimension and so needs nothing when heads go)."""
from __future__ import annotations

from typing import Any

from . import register
from .decoders import DecoderAdapter


class Qwen2(DecoderAdapter):
    def biases(self, cfg: Any) -> dict:
        return dict(n_up=2, qkv_bias=True, out_bias=False, up_bias=False, down_bias=False)


register(DecoderAdapter("llama", ("llama",), "LlamaConfig", attention_bias=True, mlp_bias=True,
                       bias_switches={"attention": "attention_bias", "ffn": "mlp_bias"}))
register(DecoderAdapter("mistral", ("mistral",), "MistralConfig", sliding_window=16))
register(Qwen2("qwen2", ("qwen2",), "Qwen2Config"))
register(DecoderAdapter("qwen3", ("qwen3",), "Qwen3Config", bias_switches={"attention": "attention_bias"}))
