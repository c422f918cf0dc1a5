"""Run the calibration batches through the model once, with no gradients, while hooks record statistics.

`each_input` yields every model input of the calibration batches in turn, after setting `state.mask` to that
input's (batch x tokens) attention mask, so hooks can count only real tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..progress import bar


@dataclass
class InputState:
    mask: torch.Tensor | None = None  # (B, T) bool: real tokens of the input being run


def real_tokens(x: torch.Tensor, state: InputState) -> torch.Tensor:
    """The rows of a (B, T, C) activation at real tokens, as (N, C) float64."""
    m = state.mask.to(x.device)
    return x[m].double()


@torch.no_grad()
def each_input(ctx, state: InputState, description: str) -> Iterator[None]:
    """Run every calibration input (both texts of a sentence-pair embedding batch) with `state.mask` set."""
    model = ctx.tm.model
    device = next(model.parameters()).device
    batches = ctx.prepared.batches
    with bar(description, len(batches)) as advance:
        for b in batches:
            for inputs in (b.inputs, b.inputs_b):
                if inputs is None:
                    continue
                state.mask = inputs["attention_mask"].bool()
                extra = {"use_cache": False} if ctx.tm.kind == "lm" else {}
                model(**{k: v.to(device) for k, v in inputs.items()}, **extra)
                yield
            advance(1)
