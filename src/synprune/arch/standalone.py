"""Shipped inside an adaptive synprune export as `synprune_modeling.py`: loads the pruned model with
`from_pretrained(DIR, trust_remote_code=True)` using only torch and transformers (no synprune import). synprune
itself uses its config view, gathered attention and MPNet hook (arch.gqa, arch.mpnet), so the two stay one code.

The folder's config.json is the unpruned architecture plus `synprune_recipe`: what synprune changed when it
sliced the model (parameter shapes, module attributes such as head counts, attention blocks removed whole,
key/value groups gathered per query head where a layer kept uneven heads per group, per-module config overrides).
`PrunedModel` subclasses the family's own class (BASE_CLASS, written into the shipped copy), builds it at full
size and applies the recipe before the weights load, so every layer has its pruned size.
"""
from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

BASE_CLASS = ""  # the exported model's class name in the shipped copy (then PrunedModel is defined)
IMPL = "synprune_gqa"


class ConfigView:
    """One module's view of the model config: `overrides` first, everything else read from the shared config."""

    def __init__(self, base: Any, overrides: dict):
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_overrides", dict(overrides))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        overrides = object.__getattribute__(self, "_overrides")
        return overrides[name] if name in overrides else getattr(object.__getattribute__(self, "_base"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_base"), name, value)

    def __deepcopy__(self, memo: dict) -> "ConfigView":
        import copy

        return type(self)(copy.deepcopy(object.__getattribute__(self, "_base"), memo),
                          copy.deepcopy(object.__getattribute__(self, "_overrides"), memo))

    @property
    def synprune_base(self) -> Any:
        return object.__getattribute__(self, "_base")


def base_config(module: nn.Module) -> Any:
    """The shared config behind a module's view (any copy of this file's ConfigView, or synprune's: a process
    may load several folders, and the first registration of the attention function serves them all)."""
    cfg = module.config
    try:
        return object.__getattribute__(cfg, "_base")
    except AttributeError:
        return cfg


def gathered_attention(module: nn.Module, query, key, value, *args, **kwargs):
    """Attention for a layer whose kept query heads are spread unevenly over its kept key/value groups: each
    query head gets its own group's keys and values, then the family's implementation runs one group per head."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    index = module.synprune_kv_index.to(key.device)
    key, value = key.index_select(1, index), value.index_select(1, index)
    impl = base_config(module)._attn_implementation
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward")
    fn = eager if impl in (None, "eager", IMPL) else ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager)
    saved, module.num_key_value_groups = module.num_key_value_groups, 1
    try:
        return fn(module, query, key, value, *args, **kwargs)
    finally:
        module.num_key_value_groups = saved


class EmptyDecoderAttention(nn.Module):
    """A decoder attention block with no heads left: adds nothing; still gives the KV cache a one-wide stub so
    the cache length stays right."""

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values", kwargs.get("layer_past")))
        if cache is not None and hasattr(cache, "update"):
            stub = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            cache.update(stub, stub, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class ResidualLayerNorm(nn.Module):
    """A BERT-style attention block with no heads left: LayerNorm(hidden_states), the norm kept at its old key."""

    def __init__(self, layer_norm: nn.Module, nested: bool):
        super().__init__()
        if nested:  # BERT, RoBERTa, ELECTRA: attention.output.LayerNorm
            self.output = nn.Module()
            self.output.LayerNorm = layer_norm
        else:  # MPNet: attention.LayerNorm
            self.LayerNorm = layer_norm
        self.nested = nested

    def forward(self, hidden_states, *args, output_attentions: bool = False, **kwargs):
        out = (self.output.LayerNorm if self.nested else self.LayerNorm)(hidden_states)
        return (out, None) if self.nested or output_attentions else (out,)


class ZeroAttention(nn.Module):
    """DistilBERT's attention with no heads left: its layer adds the output to the residual, so zeros."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


def _zero_safe_conv1d() -> type:
    from transformers.pytorch_utils import Conv1D

    class ZeroSafeConv1D(Conv1D):
        def forward(self, x):
            if x.shape[-1] == 0 or self.weight.shape[1] == 0:
                out = x.new_zeros(*x.shape[:-1], self.weight.shape[1])
                return out + self.bias if self.bias is not None else out
            return super().forward(x)

    return ZeroSafeConv1D


def position_bias_hook(module, args, kwargs):
    """MPNet: give a sliced layer the relative position bias of its kept heads."""
    index = torch.tensor(module.synprune_kept_heads, dtype=torch.long)
    if len(args) > 2 and args[2] is not None:
        args = (*args[:2], args[2].index_select(1, index.to(args[2].device)), *args[3:])
    elif kwargs.get("position_bias") is not None:
        pb = kwargs["position_bias"]
        kwargs = {**kwargs, "position_bias": pb.index_select(1, index.to(pb.device))}
    return args, kwargs


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    head, _, name = path.rpartition(".")
    return (model.get_submodule(head) if head else model), name


def apply_recipe(model: nn.Module, recipe: dict) -> None:
    """Shape a full-size model like the pruned one (see the module doc)."""
    for path, (kind, arg) in recipe.get("empty", {}).items():
        parent, name = _parent(model, path)
        old = getattr(parent, name)
        if kind == "decoder":
            new = EmptyDecoderAttention(int(arg))
        elif kind == "zero":
            new = ZeroAttention()
        else:  # "layernorm-nested" / "layernorm"
            new = ResidualLayerNorm(old.get_submodule(arg), kind == "layernorm-nested")
        setattr(parent, name, new)
    for path, shape in recipe.get("params", {}).items():
        parent, name = _parent(model, path)
        old = getattr(parent, name)
        setattr(parent, name, nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device),
                                           requires_grad=old.requires_grad))
    for path, attrs in recipe.get("attrs", {}).items():
        module = model.get_submodule(path)
        for k, v in attrs.items():
            setattr(module, k, v)
    if recipe.get("zero_safe"):
        cls = _zero_safe_conv1d()
        for path in recipe["zero_safe"]:
            model.get_submodule(path).__class__ = cls
    for path, overrides in recipe.get("config_overrides", {}).items():
        module = model.get_submodule(path)
        overrides = dict(overrides)
        if path in recipe.get("kv_index", {}):
            module.synprune_kv_index = torch.tensor(recipe["kv_index"][path], dtype=torch.long, device="cpu")
            overrides["_attn_implementation"] = IMPL
        module.config = ConfigView(base_config(module), overrides)
    for path, kept in recipe.get("position_bias_heads", {}).items():
        module = model.get_submodule(path)
        module.synprune_kept_heads = list(kept)
        module.register_forward_pre_hook(position_bias_hook, with_kwargs=True)


def register() -> None:
    """Make the gathered attention available under IMPL (once per process)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    if IMPL not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(IMPL, gathered_attention)


if BASE_CLASS:
    import transformers

    class PrunedModel(getattr(transformers, BASE_CLASS)):
        """The family's model class, each layer built at its pruned size from `config.synprune_recipe`."""

        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            register()
            apply_recipe(self, getattr(config, "synprune_recipe", None) or {})
