"""Gemma, Gemma 2 (logit soft-capping, sandwich norms) and Gemma 3 text models (q/k norms, local/global
layers). Their extra norms act on the head dimension or on the whole attention output, so removal needs
nothing beyond the Llama layout; an emptied block returns zeros, which their post-attention RMSNorm keeps zero."""
from __future__ import annotations

from . import register
from .decoders import DecoderAdapter

ATTENTION_BIAS = {"attention": "attention_bias"}  # the config switch for q/k/v/o biases (MLPs have none)

register(DecoderAdapter("gemma", ("gemma",), "GemmaConfig", bias_switches=ATTENTION_BIAS))
register(DecoderAdapter("gemma2", ("gemma2",), "Gemma2Config", bias_switches=ATTENTION_BIAS,
                         sublayer_output_norm=True, query_pre_attn_scalar=8, sliding_window=16))
register(DecoderAdapter("gemma3", ("gemma3_text",), "Gemma3TextConfig", bias_switches=ATTENTION_BIAS,
                         sublayer_output_norm=True, query_pre_attn_scalar=8, sliding_window=16))
