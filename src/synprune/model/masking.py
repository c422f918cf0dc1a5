"""Unit masking with forward pre-hooks: query heads at the input of the attention output projection,
feed-forward neurons at the input of the down projection.

transformers 5.x ignores `head_mask`, so each head's slice of the projection's input is scaled by a mask value
instead. Masks are plain tensors in ORIGINAL indices: 0/1 for pruning, or leaves with `requires_grad` for the
gradient-based importance methods (d loss / d mask). A key/value group is masked by masking all its query heads
(the same output); physical removal then drops its k/v rows.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from synprune.devices import tensor
from synprune.arch import AttentionHandles, attention_handles, ffn_handles, get_adapter, head_grid

Head = tuple[int, int]
Unit = tuple[int, int]


def kept_heads(h: AttentionHandles) -> list[int]:
    """Original indices of the query heads a layer still has (all of them unless it was physically sliced)."""
    return h.kept_heads


def neuron_grid(model: nn.Module) -> tuple[int, int]:
    s = get_adapter(model).shape(model)
    return s.n_layers, s.intermediate


def mask_from_heads(grid: tuple[int, int], pruned: Iterable[Unit]) -> torch.Tensor:
    mask = torch.ones(grid)
    for layer, unit in pruned:
        mask[layer, unit] = 0.0
    return mask


class UnitMask:
    """Context manager applying a head mask (layers x query heads) and optionally a neuron mask (layers x
    neurons), both in original indexing, to a model."""

    def __init__(self, model: nn.Module, mask: torch.Tensor | None = None, neurons: torch.Tensor | None = None):
        self.model = model
        self.grid = head_grid(model)
        self.mask = torch.ones(self.grid) if mask is None else mask
        if tuple(self.mask.shape) != self.grid:
            raise ValueError(f"mask shape {tuple(self.mask.shape)} does not match the model's heads {self.grid}")
        self.neurons = neurons
        if neurons is not None and tuple(neurons.shape) != neuron_grid(model):
            raise ValueError(f"neuron mask shape {tuple(neurons.shape)} does not match the model's {neuron_grid(model)}")
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @classmethod
    def pruning(cls, model: nn.Module, pruned: Iterable[Head] = (), neurons: Iterable[Unit] | None = None) -> "UnitMask":
        n = None if neurons is None else mask_from_heads(neuron_grid(model), neurons)
        return cls(model, mask_from_heads(head_grid(model), pruned), n)

    def attach(self) -> "UnitMask":
        self.detach()
        for h in attention_handles(self.model):
            index = torch.tensor(h.kept_heads)
            self._hooks.append(h.out_proj.register_forward_pre_hook(_scale_hook(self.mask, h.layer, index, h.head_dim)))
            if h.out_proj.bias is not None:
                self._hooks.append(h.out_proj.register_forward_hook(self._make_bias_hook(h.layer, index)))
        if self.neurons is not None:
            for f in ffn_handles(self.model):
                self._hooks.append(f.down.register_forward_pre_hook(_scale_hook(self.neurons, f.layer, torch.tensor(f.kept), 1)))
        return self

    def _make_bias_hook(self, layer: int, index: torch.Tensor):
        """A layer with every head masked drops its output bias too, as physical removal does (SPEC 4, 6)."""

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if bool((self.mask[layer].index_select(0, index) != 0).any()):
                return output
            return output - tensor(module, "bias").to(output.device)  # read back where a device_map offloaded it

        return hook

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def __enter__(self) -> "UnitMask":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()


def _scale_hook(mask: torch.Tensor, layer: int, index: torch.Tensor, width: int):
    """Scale the kept units' `width`-wide slices of a projection's input by their mask entries."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        m = mask[layer].index_select(0, index).to(dtype=x.dtype, device=x.device)
        if width == 1:
            return (x * m, *args[1:])
        x = (x.unflatten(-1, (index.numel(), width)) * m[:, None]).flatten(-2)
        return (x, *args[1:])

    return hook


HeadMask = UnitMask  # the name the head-only code uses
