"""Physical head removal: slice q/k/v rows and out-projection columns so pruned heads cost nothing.

Masking (masking.py) only zeroes a head's contribution; this module makes the model smaller and faster.
Head indices are always the original ones: each sliced attention module remembers the heads it still
has in `synprune_kept_heads`, so removal can be applied in several steps and masks keep working.
A layer that loses all its heads loses its whole attention block (q, k, v, out projection and its bias);
what is left of the sub-block is the residual path, LayerNorm(hidden_states) in the post-LN families.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .arch import AttentionHandles, get_adapter, head_grid
from .errors import SynpruneError
from .masking import kept_heads

Head = tuple[int, int]


class ResidualLayerNormAttention(nn.Module):
    """Stands in for a BERT/RoBERTa/ELECTRA attention block with no heads: LayerNorm(hidden_states).

    The LayerNorm sits at `output.LayerNorm` as in the original block, so state-dict keys do not change.
    Returns `(output, None)` like the original block (output, attention weights).
    """

    def __init__(self, layer_norm: nn.LayerNorm):
        super().__init__()
        self.output = nn.Module()
        self.output.LayerNorm = layer_norm

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return self.output.LayerNorm(hidden_states), None


class MPNetResidualLayerNormAttention(nn.Module):
    """Stands in for an MPNet attention block with no heads; MPNet returns a tuple that grows with attentions."""

    def __init__(self, layer_norm: nn.LayerNorm):
        super().__init__()
        self.LayerNorm = layer_norm

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None, position_bias: Any = None,
                output_attentions: bool = False, **kwargs: Any) -> tuple:
        out = self.LayerNorm(hidden_states)
        return (out, None) if output_attentions else (out,)


class ZeroAttention(nn.Module):
    """Stands in for a DistilBERT attention module with no heads: it adds nothing to the residual stream.

    DistilBERT's layer applies `sa_layer_norm(attention_output + hidden_states)` itself, so returning zeros
    leaves exactly LayerNorm(hidden_states).
    """

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


def _bert_empty(h: AttentionHandles) -> nn.Module:
    return ResidualLayerNormAttention(h.block_parent.attention.output.LayerNorm)


def _mpnet_empty(h: AttentionHandles) -> nn.Module:
    return MPNetResidualLayerNormAttention(h.block_parent.attention.LayerNorm)


def _distilbert_empty(h: AttentionHandles) -> nn.Module:
    return ZeroAttention()


# family -> builder of the module that replaces an attention block whose heads are all gone
EMPTY_BLOCK: dict[str, Callable[[AttentionHandles], nn.Module]] = {
    "bert": _bert_empty,
    "roberta": _bert_empty,
    "electra": _bert_empty,
    "mpnet": _mpnet_empty,
    "distilbert": _distilbert_empty,
}

# family -> attributes of the heads module that hold the number of heads x head_dim (kept in step when slicing)
ALL_HEAD_SIZE_ATTRS: dict[str, tuple[str, ...]] = {
    "bert": ("all_head_size",),
    "roberta": ("all_head_size",),
    "electra": ("all_head_size",),
    "mpnet": ("all_head_size",),  # read by MPNetSelfAttention.forward to reshape the context
    "distilbert": (),  # DistilBERT's `dim` is the model width (out_lin's output), not heads x head_dim
}


def _rows(positions: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([p * head_dim + j for p in positions for j in range(head_dim)], dtype=torch.long)


def _slice_linear(lin: nn.Linear, index: torch.Tensor, dim: int) -> None:
    """Keep only `index` along `dim` of the weight (0: output rows, 1: input columns), in place."""
    index = index.to(lin.weight.device)
    w = lin.weight.detach().index_select(dim, index).clone()
    lin.weight = nn.Parameter(w, requires_grad=lin.weight.requires_grad)
    if dim == 0:
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.detach().index_select(0, index).clone(),
                                    requires_grad=lin.bias.requires_grad)
        lin.out_features = w.shape[0]
    else:
        lin.in_features = w.shape[1]


def _mpnet_position_bias_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """MPNet computes one (B, n_heads, T, T) position bias for all layers: give this layer its kept heads."""
    index = torch.tensor(module.synprune_kept_heads, dtype=torch.long)
    if len(args) > 2 and args[2] is not None:
        args = (*args[:2], args[2].index_select(1, index.to(args[2].device)), *args[3:])
    elif kwargs.get("position_bias") is not None:
        pb = kwargs["position_bias"]
        kwargs = {**kwargs, "position_bias": pb.index_select(1, index.to(pb.device))}
    return args, kwargs


def _slice_layer(family: str, h: AttentionHandles, keep: list[int]) -> None:
    current = kept_heads(h)
    positions = [current.index(k) for k in keep]
    rows = _rows(positions, h.head_dim)
    for lin in (h.query, h.key, h.value):
        _slice_linear(lin, rows, 0)
    _slice_linear(h.out_proj, rows, 1)
    setattr(h.heads_module, h.heads_attr, len(keep))
    for attr in ALL_HEAD_SIZE_ATTRS[family]:
        setattr(h.heads_module, attr, len(keep) * h.head_dim)
    h.heads_module.synprune_kept_heads = list(keep)
    if family == "mpnet" and not getattr(h.heads_module, "_synprune_bias_hook", False):
        h.heads_module.register_forward_pre_hook(_mpnet_position_bias_hook, with_kwargs=True)
        h.heads_module._synprune_bias_hook = True


def _remove_block(family: str, h: AttentionHandles) -> None:
    setattr(h.block_parent, h.block_attr, EMPTY_BLOCK[family](h))
    h.block_parent._synprune_attention_removed = True


def validate_heads(model: nn.Module, pruned: Iterable[Head]) -> list[Head]:
    """Pruned heads as sorted (layer, head) pairs, checked against the model's original head grid."""
    n_layers, n_heads = head_grid(model)
    out = set()
    for item in pruned:
        try:
            layer, head = (int(x) for x in item)
        except (TypeError, ValueError):
            raise SynpruneError(f"a pruned head must be a [layer, head] pair, got {item!r}") from None
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise SynpruneError(
                f"head [{layer}, {head}] is outside the model's {n_layers} layers x {n_heads} heads (0-indexed)")
        out.add((layer, head))
    return sorted(out)


def pruning_state(model: nn.Module) -> dict[str, list]:
    """Kept heads per layer (original indices; [] for a removed block) and the layers removed whole."""
    adapter = get_adapter(model)
    kept: list[list[int]] = []
    removed: list[int] = []
    for i, layer in enumerate(adapter.layers(model)):
        if getattr(layer, "_synprune_attention_removed", False):
            kept.append([])
            removed.append(i)
        else:
            kept.append(kept_heads(adapter.handles(i, layer)))
    return {"kept_heads": kept, "removed_layers": removed}


def remove_heads(model: nn.Module, pruned: Iterable[Head]) -> dict[str, list]:
    """Remove `pruned` heads (original [layer, head] indices) from `model` in place.

    Heads already removed are ignored, so this can be called again with a larger set. Returns
    `pruning_state(model)`: `kept_heads` per layer and `removed_layers`. Attach any HeadMask afresh
    afterwards: a mask attached before removal indexes the old shapes.
    """
    family = get_adapter(model).family
    adapter = get_adapter(model)
    by_layer: dict[int, set[int]] = defaultdict(set)
    for layer, head in validate_heads(model, pruned):
        by_layer[layer].add(head)
    layers = adapter.layers(model)
    for i, heads in sorted(by_layer.items()):
        if getattr(layers[i], "_synprune_attention_removed", False):
            continue
        h = adapter.handles(i, layers[i])
        current = kept_heads(h)
        keep = [k for k in current if k not in heads]
        if not keep:
            _remove_block(family, h)
        elif len(keep) < len(current):
            _slice_layer(family, h, keep)
    return pruning_state(model)


def apply_state(model: nn.Module, kept: list[list[int]]) -> dict[str, list]:
    """Shape a full-size model like a pruned one from its per-layer kept heads (as saved on export)."""
    n_layers, n_heads = head_grid(model)
    if len(kept) != n_layers:
        raise SynpruneError(f"kept heads list has {len(kept)} layers, the model has {n_layers}")
    pruned = [(i, h) for i, ks in enumerate(kept) for h in range(n_heads) if h not in set(ks)]
    return remove_heads(model, pruned)
