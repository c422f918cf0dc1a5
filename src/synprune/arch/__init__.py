"""Model families: one adapter per family, each in its own module of this package.

    from synprune.arch import get_adapter, attention_handles, ffn_handles, head_grid
    adapter = get_adapter(model)           # the family's adapter (SynpruneError for unknown types)
    adapter.layers(model)                  # its transformer layers, in order
    attention_handles(model)               # per layer that still has attention: q/k/v/o, head counts, kept units
    ffn_handles(model)                     # per layer: up/gate and down projections, kept neurons

Adding a family = one new module here that subclasses `Adapter`, calls `register(...)`, and gives a
`tiny_config()` (the shared test suite then runs every check on it). See base.py for what an adapter owns.
"""
from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from ..errors import SynpruneError
from .base import Adapter, AttentionHandles, FFNHandles, Shape, in_dim, is_conv1d, out_dim, weight_rows

__all__ = ["Adapter", "AttentionHandles", "FFNHandles", "Shape", "register", "get_adapter", "adapters",
           "attention_handles", "ffn_handles", "head_grid", "kv_grid", "group_size", "removed_kv_groups", "in_dim", "out_dim", "is_conv1d",
           "weight_rows"]

ADAPTERS: dict[str, Adapter] = {}
_SUPPORT = {"base", "gqa", "standalone"}


def register(adapter: Adapter) -> Adapter:
    ADAPTERS[adapter.family] = adapter
    return adapter


def _load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in _SUPPORT:
            importlib.import_module(f"{__name__}.{mod.name}")


def adapters() -> dict[str, Adapter]:
    """Every registered family, by name."""
    _load_all()
    return dict(ADAPTERS)


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter of a model (or of a config)."""
    model_type = getattr(getattr(model, "config", model), "model_type", None)
    for adapter in adapters().values():
        if model_type in adapter.model_types:
            return adapter
    known = ", ".join(t for a in ADAPTERS.values() for t in a.model_types)
    raise SynpruneError(f"model type {model_type!r} has no synprune adapter; supported types: {known} "
                        "(add one module to synprune/arch, see its README section 'Adding a model family')")


def attention_handles(model: nn.Module) -> list[AttentionHandles]:
    """Handles for every layer that still has an attention block (blocks removed whole are skipped)."""
    adapter = get_adapter(model)
    return [adapter.attention(i, layer) for i, layer in enumerate(adapter.layers(model))
            if not getattr(layer, "_synprune_attention_removed", False)]


def ffn_handles(model: nn.Module) -> list[FFNHandles]:
    adapter = get_adapter(model)
    return [adapter.ffn(i, layer) for i, layer in enumerate(adapter.layers(model))]


def head_grid(model: nn.Module) -> tuple[int, int]:
    """(layers, query heads per layer) of the unpruned architecture."""
    s = get_adapter(model).shape(model)
    return s.n_layers, s.n_heads


def group_size(model: nn.Module) -> int:
    """Query heads per key/value group (1 without grouped-query attention)."""
    s = get_adapter(model).shape(model)
    return s.n_heads // s.n_kv


def removed_kv_groups(model: nn.Module, pruned_heads) -> list[list[int]]:
    """[layer, group] of the key/value groups whose query heads are all in `pruned_heads`."""
    gs = group_size(model)
    gone = {(int(l), int(h)) for l, h in pruned_heads}
    n_layers, n_kv = kv_grid(model)
    return [[l, g] for l in range(n_layers) for g in range(n_kv) if all((l, g * gs + j) in gone for j in range(gs))]


def kv_grid(model: nn.Module) -> tuple[int, int]:
    """(layers, key/value groups per layer) of the unpruned architecture."""
    s = get_adapter(model).shape(model)
    return s.n_layers, s.n_kv
