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

import contextlib
import sys
from typing import Any

import torch
from torch import nn

IMPL = "synprune_gqa"


class ConfigView:
    """A module's view of the model config: `overrides` first, everything else read from (and written to) the
    shared config, so changes of the model's attention implementation still reach the module."""

    def __init__(self, base: Any, overrides: dict[str, Any]):
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_overrides", dict(overrides))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        overrides = object.__getattribute__(self, "_overrides")
        if name in overrides:
            return overrides[name]
        return getattr(object.__getattribute__(self, "_base"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_base"), name, value)

    def __deepcopy__(self, memo: dict) -> "ConfigView":
        import copy

        return ConfigView(copy.deepcopy(self._base, memo), copy.deepcopy(self._overrides, memo))

    @property
    def synprune_base(self) -> Any:
        return object.__getattribute__(self, "_base")


def base_config(module: nn.Module) -> Any:
    """The shared config behind a module's view (also the view of a model loaded through an export's shipped
    synprune_modeling.py, which has its own copy of ConfigView)."""
    cfg = module.config
    try:
        return object.__getattribute__(cfg, "_base")
    except AttributeError:
        return cfg


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


@contextlib.contextmanager
def _one_group_per_head(module: nn.Module):
    saved = module.num_key_value_groups
    module.num_key_value_groups = 1
    try:
        yield
    finally:
        module.num_key_value_groups = saved


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    index = module.synprune_kv_index.to(key.device)
    key, value = key.index_select(1, index), value.index_select(1, index)
    impl = base_config(module)._attn_implementation
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward")
    fn = eager if impl in (None, "eager", IMPL) else ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager)
    with _one_group_per_head(module):
        return fn(module, query, key, value, *args, **kwargs)


def _register() -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    if IMPL not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(IMPL, attention)
