"""Standard checkpoints: a pruned model whose every layer kept the same numbers of query heads, key/value groups
and feed-forward neurons (`--layout uniform`) is an ordinary model of its family with smaller sizes in its
config. `standard_model` builds that model (the family's own class, no synprune attributes, no registered
attention function) and moves the sliced weights into it, so `from_pretrained` loads the saved folder with
nothing but transformers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from synprune.arch import get_adapter
from synprune.errors import SynpruneError
from synprune.model.remove import pruning_state


@dataclass(frozen=True)
class UniformSizes:
    """Per-layer sizes of a uniformly pruned model."""

    n_heads: int  # query heads per layer
    n_kv: int  # key/value groups per layer
    intermediate: int  # feed-forward neurons per layer


def uniform_sizes(model: nn.Module) -> UniformSizes | None:
    """The per-layer sizes when every layer of the (sliced) `model` has the same numbers of query heads, key/value
    groups and neurons, with as many kept query heads in each kept group and no attention block removed whole;
    else None."""
    adapter = get_adapter(model)
    s = adapter.shape(model)
    state = pruning_state(model)
    if state["removed_layers"]:
        return None
    heads, kv = state["kept_heads"], state["kept_kv_groups"]
    neurons = [s.intermediate if n is None else len(n) for n in state["kept_neurons"]]
    if len({len(h) for h in heads}) != 1 or len({len(g) for g in kv}) != 1 or len(set(neurons)) != 1:
        return None
    gs = s.n_heads // s.n_kv
    for hs, gs_kept in zip(heads, kv):
        per_group = [sum(1 for h in hs if h // gs == g) for g in gs_kept]
        if len(set(per_group)) != 1:
            return None
    return UniformSizes(len(heads[0]), len(kv[0]), neurons[0])


def standard_model(model: nn.Module, sizes: UniformSizes | None = None) -> nn.Module:
    """The family's own model class built from a config with the pruned sizes, holding `model`'s weights: the
    same outputs, loadable by `from_pretrained` without synprune. `model` is a sliced (exported) model whose
    layers are uniform (`uniform_sizes`); anything else, or a size the family's config cannot express, is a
    SynpruneError."""
    sizes = sizes or uniform_sizes(model)
    if sizes is None:
        raise SynpruneError("the pruned layers differ in size (an adaptive layout); only a uniform layout "
                            "(--layout uniform) has a standard config")
    adapter = get_adapter(model)
    config = adapter.standard_config(model.config, sizes.n_heads, sizes.n_kv, sizes.intermediate)
    config.architectures = [type(model).__name__]
    dtype = next(model.parameters()).dtype
    impl = getattr(model.config, "_attn_implementation", None)
    kwargs: dict[str, Any] = {"attn_implementation": impl} if impl else {}
    new = type(model)._from_config(config, dtype=dtype, **kwargs)
    try:
        new.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise SynpruneError(f"the {adapter.family} model with standard sizes does not fit the pruned weights: {first}") from None
    return new.to(next(model.parameters()).device).train(model.training)
