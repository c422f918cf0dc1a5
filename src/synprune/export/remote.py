"""Adaptive exports that load without synprune: `from_pretrained(DIR, trust_remote_code=True)`.

An adaptive export keeps the unpruned config; this module adds to it `synprune_recipe` (what slicing changed,
read off the sliced model against a full-size model built on the meta device: parameter shapes, scalar module
attributes such as head counts, blocks removed whole, per-module config overrides, key/value gathering for
uneven groups, MPNet's position-bias heads) and an `auto_map` to `synprune_modeling.py`, a copy of
`synprune.arch.standalone` (torch and transformers only) that applies the recipe at init.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synprune.arch import get_adapter
from synprune.arch.gqa import ConfigView

MODELING_FILE = "synprune_modeling.py"
_TEMPLATE = Path(__file__).resolve().parents[1] / "arch" / "standalone.py"
# replacement modules of attention blocks removed whole -> (kind, what the remote code needs from the old block)
_EMPTY_KINDS = {"EmptyDecoderAttention": "decoder", "ZeroAttention": "zero",
                "ResidualLayerNormAttention": "layernorm-nested", "EmptyMPNetAttention": "layernorm"}
_EMPTY_ARG = {"layernorm-nested": "output.LayerNorm", "layernorm": "LayerNorm"}
_SCALARS = (bool, int, float, str)


def recipe(small: nn.Module) -> dict[str, Any]:
    """What turns a full-size model of `small`'s class and config into `small`'s shapes (see the module doc)."""
    adapter = get_adapter(small)
    with torch.device("meta"):
        ref = type(small)._from_config(copy.deepcopy(small.config))
    names = {id(m): n for n, m in small.named_modules()}
    empty: dict[str, list] = {}
    for i, layer in enumerate(adapter.layers(small)):
        if getattr(layer, "_synprune_attention_removed", False):
            block = getattr(layer, adapter.attention_attr)
            kind = _EMPTY_KINDS[type(block).__name__]
            empty[names[id(block)]] = [kind, i if kind == "decoder" else _EMPTY_ARG.get(kind)]
    ref_params = dict(ref.named_parameters())
    params = {n: list(p.shape) for n, p in small.named_parameters() if tuple(ref_params[n].shape) != tuple(p.shape)}
    ref_modules = dict(ref.named_modules())
    attrs: dict[str, dict] = {}
    zero_safe, overrides, kv_index, bias_heads = [], {}, {}, {}
    for name, m in small.named_modules():
        r = ref_modules.get(name)
        if r is not None and isinstance(m, type(r)):
            changed = {k: v for k, v in vars(m).items() if not k.startswith(("_", "synprune_")) and k != "training"
                       and isinstance(v, _SCALARS) and hasattr(r, k) and getattr(r, k) != v}
            if changed:
                attrs[name] = changed
        if type(m).__name__ == "ZeroSafeConv1D":
            zero_safe.append(name)
        if isinstance(getattr(m, "config", None), ConfigView) or hasattr(m, "synprune_kv_index"):
            view = m.config
            own = dict(object.__getattribute__(view, "_overrides")) if isinstance(view, ConfigView) else {}
            own.pop("_attn_implementation", None)
            overrides[name] = own
            if hasattr(m, "synprune_kv_index"):
                kv_index[name] = [int(x) for x in m.synprune_kv_index]
        if getattr(m, "_synprune_bias_hook", False):
            bias_heads[name] = list(m.synprune_kept_heads)
    return {"empty": empty, "params": params, "attrs": attrs, "zero_safe": zero_safe,
            "config_overrides": overrides, "kv_index": kv_index, "position_bias_heads": bias_heads}


def add_remote_code(small: nn.Module, config: Any, info: dict, folder: Path) -> None:
    """Put the recipe and the auto_map into `config` (about to be saved in `folder`) and ship the modeling file;
    a model class with no transformers Auto class gets neither (it loads with synprune.load_pruned only)."""
    auto = info.get("auto_class")
    info["remote_code"] = bool(auto)
    if not auto:
        return
    config.synprune_recipe = recipe(small)
    config.auto_map = {auto: f"{MODELING_FILE[:-3]}.PrunedModel"}
    text = _TEMPLATE.read_text(encoding="utf-8")
    marker = 'BASE_CLASS = ""'
    assert marker in text, f"{_TEMPLATE} lost its {marker!r} line"
    text = text.replace(marker, f'BASE_CLASS = "{type(small).__name__}"', 1)
    (folder / MODELING_FILE).write_text(text, encoding="utf-8")
