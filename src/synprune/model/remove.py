"""Physical removal of units: slice projections so pruned query heads, key/value groups and feed-forward
neurons cost nothing. Every family fact comes from its adapter (synprune.arch).

Unit indices are always the original ones: each sliced module remembers what it still has
(`synprune_kept_heads`, `synprune_kept_kv`, `synprune_kept_neurons`), so removal can be applied in several steps
and masks keep working. A query head goes with its q rows and output-projection columns; a key/value group
goes with its k/v rows once none of its query heads is left. A layer that loses all its heads loses its whole
attention block (the adapter says what stands in: the residual path). A layer that loses all its neurons keeps
zero-width projections (the down projection's bias, if any, stays: masking gives the same).
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Iterable

import torch
from torch import nn

from synprune.arch import AttentionHandles, FFNHandles, get_adapter
from synprune.arch.base import out_dim, slice_inputs, slice_outputs
from synprune.errors import SynpruneError

Head = tuple[int, int]
Unit = tuple[int, int]


def _span(start: int, positions: list[int], width: int) -> list[int]:
    return [start + p * width + j for p in positions for j in range(width)]


def _validate(pruned: Iterable, n_layers: int, n_units: int, what: str) -> list[Unit]:
    out = set()
    for item in pruned:
        try:
            layer, unit = (int(x) for x in item)
        except (TypeError, ValueError):
            raise SynpruneError(f"a pruned {what} must be a [layer, index] pair, got {item!r}") from None
        if not (0 <= layer < n_layers and 0 <= unit < n_units):
            raise SynpruneError(f"{what} [{layer}, {unit}] is outside the model's {n_layers} layers x {n_units} {what}s (0-indexed)")
        out.add((layer, unit))
    return sorted(out)


def validate_heads(model: nn.Module, pruned: Iterable[Head]) -> list[Head]:
    """Pruned query heads as sorted (layer, head) pairs, checked against the model's original head grid."""
    s = get_adapter(model).shape(model)
    return _validate(pruned, s.n_layers, s.n_heads, "head")


def validate_neurons(model: nn.Module, pruned: Iterable[Unit]) -> list[Unit]:
    s = get_adapter(model).shape(model)
    return _validate(pruned, s.n_layers, s.intermediate, "neuron")


def _slice_attention(adapter, h: AttentionHandles, keep_q: list[int]) -> None:
    cur_q, cur_kv = h.kept_heads, h.kept_kv
    keep_kv = [g for g in cur_kv if any(h.group_of(q) == g for q in keep_q)]
    dh = h.head_dim
    q_pos = [cur_q.index(q) for q in keep_q]
    kv_pos = [cur_kv.index(g) for g in keep_kv]
    if h.fused:  # one module, outputs [q heads | k groups | v groups]
        nq, nkv = len(cur_q), len(cur_kv)
        rows = _span(0, q_pos, dh) + _span(nq * dh, kv_pos, dh) + _span((nq + nkv) * dh, kv_pos, dh)
        slice_outputs(h.q, torch.tensor(rows, dtype=torch.long))
    else:
        slice_outputs(h.q, torch.tensor(_span(0, q_pos, dh), dtype=torch.long))
        kv_rows = torch.tensor(_span(0, kv_pos, dh), dtype=torch.long)
        slice_outputs(h.k, kv_rows)
        slice_outputs(h.v, kv_rows)
    slice_inputs(h.out_proj, torch.tensor(_span(0, q_pos, dh), dtype=torch.long))
    m = h.module
    m.synprune_n_heads, m.synprune_n_kv = h.n_heads, h.n_kv
    m.synprune_kept_heads, m.synprune_kept_kv = list(keep_q), list(keep_kv)
    adapter.set_head_counts(h, len(keep_q), len(keep_kv))


def _remove_block(adapter, h: AttentionHandles) -> None:
    setattr(h.block_parent, h.block_attr, adapter.empty_attention(h))
    h.block_parent._synprune_attention_removed = True


def _slice_ffn(f: FFNHandles, keep: list[int]) -> None:
    cur = f.kept
    pos = [cur.index(i) for i in keep]
    for up in f.up:
        part = out_dim(up) // f.up_parts
        rows = [k * part + p for k in range(f.up_parts) for p in pos]
        slice_outputs(up, torch.tensor(rows, dtype=torch.long))
    slice_inputs(f.down, torch.tensor(pos, dtype=torch.long))
    f.module.synprune_n_neurons = f.intermediate
    f.module.synprune_kept_neurons = list(keep)


def pruning_state(model: nn.Module) -> dict[str, list]:
    """What the model still has, in original indices: query heads and key/value groups per layer ([] for a
    removed block), the blocks removed whole, and neurons per layer (None for a layer with all of them)."""
    adapter = get_adapter(model)
    s = adapter.shape(model)
    heads: list[list[int]] = []
    kv: list[list[int]] = []
    removed: list[int] = []
    neurons: list[list[int] | None] = []
    for i, layer in enumerate(adapter.layers(model)):
        if getattr(layer, "_synprune_attention_removed", False):
            heads.append([])
            kv.append([])
            removed.append(i)
        else:
            h = adapter.attention(i, layer)
            heads.append(h.kept_heads)
            kv.append(h.kept_kv)
        f = adapter.ffn(i, layer)
        neurons.append(None if not hasattr(f.module, "synprune_kept_neurons") else f.kept)
    state = {"kept_heads": heads, "removed_layers": removed, "kept_kv_groups": kv, "kept_neurons": neurons}
    state["counts"] = {"heads": sum(map(len, heads)), "kv_groups": sum(map(len, kv)),
                       "neurons": sum(s.intermediate if n is None else len(n) for n in neurons)}
    return state


def remove_units(model: nn.Module, heads: Iterable[Head] = (), neurons: Iterable[Unit] = ()) -> dict[str, list]:
    """Remove query `heads` and feed-forward `neurons` (original [layer, index] pairs) from `model` in place.

    Units already removed are ignored, so this can be called again with a larger set. Returns
    `pruning_state(model)`. Attach any mask afresh afterwards: a mask attached before removal indexes the old
    shapes.
    """
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    by_layer: dict[int, set[int]] = defaultdict(set)
    for layer, head in validate_heads(model, heads):
        by_layer[layer].add(head)
    for i, gone in sorted(by_layer.items()):
        if getattr(layers[i], "_synprune_attention_removed", False):
            continue
        h = adapter.attention(i, layers[i])
        current = h.kept_heads
        keep = [k for k in current if k not in gone]
        if not keep:
            _remove_block(adapter, h)
        elif len(keep) < len(current):
            _slice_attention(adapter, h, keep)
    by_layer = defaultdict(set)
    for layer, n in validate_neurons(model, neurons):
        by_layer[layer].add(n)
    for i, gone in sorted(by_layer.items()):
        f = adapter.ffn(i, layers[i])
        keep = [k for k in f.kept if k not in gone]
        if len(keep) < len(f.kept):
            _slice_ffn(f, keep)
    return pruning_state(model)


def remove_heads(model: nn.Module, pruned: Iterable[Head]) -> dict[str, list]:
    """`remove_units` for query heads only."""
    return remove_units(model, heads=pruned)


def without_heads(model: nn.Module, pruned: Iterable[Head]) -> nn.Module:
    """A copy of `model` with `pruned` heads physically removed; `model` itself is left as it was."""
    small = copy.deepcopy(model)
    remove_heads(small, pruned)
    return small


def apply_state(model: nn.Module, state: dict | list[list[int]]) -> dict[str, list]:
    """Shape a full-size model like a pruned one from its saved state (or, as format 1 saved, its per-layer
    kept heads)."""
    if not isinstance(state, dict):
        state = {"kept_heads": state}
    s = get_adapter(model).shape(model)
    kept = state["kept_heads"]
    if len(kept) != s.n_layers:
        raise SynpruneError(f"kept heads list has {len(kept)} layers, the model has {s.n_layers}")
    heads = [(i, h) for i, ks in enumerate(kept) for h in range(s.n_heads) if h not in set(ks)]
    neurons = [(i, n) for i, ks in enumerate(state.get("kept_neurons") or [None] * s.n_layers) if ks is not None
               for n in range(s.intermediate) if n not in set(ks)]
    return remove_units(model, heads, neurons)
