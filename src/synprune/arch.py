"""Architecture adapters: where each model family keeps its attention projections and head counts.

Everything that touches heads (masking, scoring, physical removal) goes through these handles, so a new
architecture is one entry in `ADAPTERS`, not a branch in every module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .errors import SynpruneError


@dataclass
class AttentionHandles:
    """One layer's self-attention: the projections and the module that holds the head count."""

    layer: int
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    out_proj: nn.Linear
    heads_module: nn.Module  # owns the head-count attribute(s) updated on physical removal
    heads_attr: str  # e.g. "num_attention_heads" or "n_heads"
    head_dim: int
    block_parent: nn.Module  # the transformer layer that owns the attention block
    block_attr: str  # attribute name of the attention block in `block_parent`

    @property
    def num_heads(self) -> int:
        return int(getattr(self.heads_module, self.heads_attr))


@dataclass(frozen=True)
class ArchAdapter:
    """How to find the encoder layers of a family and the attention handles inside each layer."""

    family: str
    model_types: tuple[str, ...]
    layers: Callable[[nn.Module], list[nn.Module]]
    handles: Callable[[int, nn.Module], AttentionHandles]


def _bert_like(i: int, layer: nn.Module) -> AttentionHandles:
    sa = layer.attention.self
    return AttentionHandles(
        layer=i, query=sa.query, key=sa.key, value=sa.value, out_proj=layer.attention.output.dense,
        heads_module=sa, heads_attr="num_attention_heads", head_dim=sa.attention_head_size,
        block_parent=layer, block_attr="attention",
    )


def _distilbert(i: int, layer: nn.Module) -> AttentionHandles:
    sa = layer.attention
    return AttentionHandles(
        layer=i, query=sa.q_lin, key=sa.k_lin, value=sa.v_lin, out_proj=sa.out_lin,
        heads_module=sa, heads_attr="n_heads", head_dim=sa.attention_head_size,
        block_parent=layer, block_attr="attention",
    )


def _mpnet(i: int, layer: nn.Module) -> AttentionHandles:
    sa = layer.attention.attn
    return AttentionHandles(
        layer=i, query=sa.q, key=sa.k, value=sa.v, out_proj=sa.o,
        heads_module=sa, heads_attr="num_attention_heads", head_dim=sa.attention_head_size,
        block_parent=layer, block_attr="attention",
    )


def _encoder_layers(m: nn.Module) -> list[nn.Module]:
    return list(m.base_model.encoder.layer)


ADAPTERS: dict[str, ArchAdapter] = {
    a.family: a
    for a in (
        ArchAdapter("bert", ("bert",), _encoder_layers, _bert_like),
        ArchAdapter("roberta", ("roberta", "xlm-roberta", "camembert"), _encoder_layers, _bert_like),
        ArchAdapter("electra", ("electra",), _encoder_layers, _bert_like),
        ArchAdapter("distilbert", ("distilbert",), lambda m: list(m.base_model.transformer.layer), _distilbert),
        ArchAdapter("mpnet", ("mpnet",), _encoder_layers, _mpnet),
    )
}


def get_adapter(model: nn.Module) -> ArchAdapter:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS.values():
        if model_type in adapter.model_types:
            return adapter
    known = ", ".join(t for a in ADAPTERS.values() for t in a.model_types)
    raise SynpruneError(
        f"model type {model_type!r} has no attention-head adapter; supported types: {known} "
        "(add one to synprune.arch.ADAPTERS)"
    )


def attention_handles(model: nn.Module) -> list[AttentionHandles]:
    """Handles for every layer that still has an attention block (layers removed whole are skipped)."""
    adapter = get_adapter(model)
    out = []
    for i, layer in enumerate(adapter.layers(model)):
        if getattr(layer, "_synprune_attention_removed", False):
            continue
        out.append(adapter.handles(i, layer))
    return out


def head_grid(model: nn.Module) -> tuple[int, int]:
    """(layers, heads per layer) of the unpruned architecture, from the config."""
    cfg = model.config
    n_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers")
    n_heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_heads")
    return int(n_layers), int(n_heads)
