"""Grouped-query attention after uneven pruning.

transformers' attention functions expand K/V with `repeat_kv(x, num_key_value_groups)`: every key/value group
serves the same number of consecutive query heads. After pruning, kept query heads may be spread unevenly over
the kept groups (2 in one, 1 in another). Then the attention module gets a per-module config view whose
`_attn_implementation` is "synprune_gqa": a registered attention function that gathers, for each kept query
head, its own group's K/V (`synprune_kv_index`) and calls the model's chosen implementation with one group per
head. The KV cache still stores only the kept groups. Families whose forward reads head counts from the config
(Phi-3) get those overridden in the same view.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .standalone import IMPL, ConfigView, base_config, gathered_attention, register as _register  # noqa: F401 (public here)


def configure(module: nn.Module, overrides: dict[str, Any], kv_index: torch.Tensor | None) -> None:
    """Give `module` its config view (or its plain config back when nothing needs overriding)."""
    base = base_config(module)
    if kv_index is not None:
        overrides = {**overrides, "_attn_implementation": IMPL}
        module.synprune_kv_index = kv_index
    elif hasattr(module, "synprune_kv_index"):
        del module.synprune_kv_index
    module.config = ConfigView(base, overrides) if overrides else base
    _register()
