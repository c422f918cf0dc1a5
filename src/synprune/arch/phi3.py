"""Phi-3: fused `qkv_proj` (outputs laid out [q heads | k groups | v groups]) and fused `gate_up_proj`
([gate | up], one row in each half per neuron). Its forward reads the query head count from the config, so a
sliced layer gets its own counts through a config view."""
from __future__ import annotations

from typing import Any

from torch import nn

from . import register
from .base import FFNHandles
from .decoders import DecoderAdapter


class Phi3(DecoderAdapter):
    count_overrides = True

    def qkv(self, a: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
        return a.qkv_proj, a.qkv_proj, a.qkv_proj

    def ffn(self, i: int, layer: nn.Module) -> FFNHandles:
        m = layer.mlp
        return FFNHandles.of(i, m, (m.gate_up_proj,), m.down_proj, up_parts=2)

    def biases(self, cfg: Any) -> dict:
        return dict(n_up=2, qkv_bias=False, out_bias=False, up_bias=False, down_bias=False)


register(Phi3("phi3", ("phi3",), "Phi3Config", pad_token_id=0, bos_token_id=1, eos_token_id=2))
