"""Head masking with a forward pre-hook on the attention output projection.

transformers 5.x ignores `head_mask`, so each head's slice of the projection's input is scaled by a mask
value instead. The mask is a plain tensor: 0/1 for pruning, or a leaf with `requires_grad` for the
gradient-based importance methods (d loss / d mask).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .arch import AttentionHandles, attention_handles, head_grid

Head = tuple[int, int]


def kept_heads(h: AttentionHandles) -> list[int]:
    """Original indices of the heads a layer still has (all of them unless it was physically sliced)."""
    return list(getattr(h.heads_module, "synprune_kept_heads", range(h.num_heads)))


def mask_from_heads(grid: tuple[int, int], pruned: Iterable[Head]) -> torch.Tensor:
    mask = torch.ones(grid)
    for layer, head in pruned:
        mask[layer, head] = 0.0
    return mask


class HeadMask:
    """Context manager that applies `mask` (layers x heads, original indexing) to a model's heads."""

    def __init__(self, model: nn.Module, mask: torch.Tensor | None = None):
        self.model = model
        self.grid = head_grid(model)
        self.mask = torch.ones(self.grid) if mask is None else mask
        if tuple(self.mask.shape) != self.grid:
            raise ValueError(f"mask shape {tuple(self.mask.shape)} does not match the model's heads {self.grid}")
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @classmethod
    def pruning(cls, model: nn.Module, pruned: Iterable[Head]) -> "HeadMask":
        return cls(model, mask_from_heads(head_grid(model), pruned))

    def attach(self) -> "HeadMask":
        self.detach()
        for h in attention_handles(self.model):
            index = torch.tensor(kept_heads(h))
            self._hooks.append(h.out_proj.register_forward_pre_hook(self._make_hook(h.layer, index, h.head_dim)))
            if h.out_proj.bias is not None:
                self._hooks.append(h.out_proj.register_forward_hook(self._make_bias_hook(h.layer, index)))
        return self

    def _make_hook(self, layer: int, index: torch.Tensor, head_dim: int):
        def hook(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            m = self.mask[layer].index_select(0, index).to(dtype=x.dtype, device=x.device)
            x = (x.unflatten(-1, (index.numel(), head_dim)) * m[:, None]).flatten(-2)
            return (x, *args[1:])

        return hook

    def _make_bias_hook(self, layer: int, index: torch.Tensor):
        """A layer with every head masked drops its output bias too, as physical removal does (SPEC 4, 6)."""

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if bool((self.mask[layer].index_select(0, index) != 0).any()):
                return output
            return output - module.bias

        return hook

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def __enter__(self) -> "HeadMask":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()
