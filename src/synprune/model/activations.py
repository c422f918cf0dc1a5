"""Read projection inputs on the calibration data: a `Tap` hooks modules and hands each hook the real
(non-padding) tokens of the batch being run, as an (N, width) matrix.

    with Tap({key: module, ...}, on_input) as tap:
        for inputs in model_inputs(tm, batches):
            tap.run(tm.model, inputs)
"""
from __future__ import annotations

import contextlib
from typing import Callable, Collection, Iterator, Mapping, Protocol, Sequence

import torch
from torch import nn

from synprune.devices import input_device
from synprune.model.load import TaskModel


class StopForward(Exception):
    """Raised by a hook to end a forward pass once what it needs has been read."""


class Inputs(Protocol):
    """A batch of tokenized inputs (`synprune.evaluation.evaluate.Batch`); `inputs_b`: an embedding model's second sentences."""

    inputs: dict[str, torch.Tensor]
    inputs_b: dict[str, torch.Tensor] | None


def model_inputs(tm: TaskModel, batches: Sequence[Inputs]) -> Iterator[dict[str, torch.Tensor]]:
    """Every model input of the batches: both sentences of an embedding model's pairs are run."""
    device = input_device(tm.model)
    for b in batches:
        for inputs in (b.inputs, b.inputs_b):
            if inputs is not None:
                yield {k: v.to(device) for k, v in inputs.items()}


class Tap:
    """Forward hooks on `modules` calling `fn(key, x)` with the module's input (or its output: `output=True` for
    every module, or a collection of the keys whose output is read) at the non-padding tokens, as a float64
    (N, width) matrix. `stop_after` ends the forward pass (StopForward, caught by `run`) once that key has
    been read. `pooled` ("first" / "last"): only each sequence's first / last non-padding token, the one a
    classifier pools, one row per sequence."""

    def __init__(self, modules: Mapping[object, nn.Module], fn: Callable[[object, torch.Tensor], None],
                 output: bool | Collection = False, stop_after: object | None = None, pooled: str | None = None):
        self.modules, self.fn, self.stop_after, self.pooled = dict(modules), fn, stop_after, pooled
        self.outputs = set(self.modules) if output is True else set(output or ())
        self.keep: torch.Tensor | None = None
        self._hooks: list = []

    def __enter__(self) -> "Tap":
        for key, module in self.modules.items():
            if key in self.outputs:
                self._hooks.append(module.register_forward_hook(self._hook(key, out=True)))
            else:
                self._hooks.append(module.register_forward_pre_hook(self._hook(key, out=False)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def _hook(self, key: object, out: bool):
        def hook(module, args, *rest):
            x = rest[0] if out else args[0]
            self.fn(key, self.tokens(x))
            if key == self.stop_after:
                raise StopForward

        return hook

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The rows read, on the CPU in float64 whatever device the module ran on."""
        x = x.detach()
        keep = None if self.keep is None else self.keep.to(x.device)
        if self.pooled is not None and x.dim() == 3:
            x = x[torch.arange(x.shape[0], device=x.device), pooled_rows(keep, x.shape[:2], self.pooled).to(x.device)]
        elif keep is not None and x.dim() == 3 and x.shape[:2] == keep.shape:
            x = x[keep]
        else:
            x = x.reshape(-1, x.shape[-1])
        return x.to("cpu", torch.float64)

    @torch.no_grad()
    def run(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
        mask = inputs.get("attention_mask")
        self.keep = mask.bool() if mask is not None else None
        try:
            model(**inputs)
        except StopForward:
            pass


def pooled_rows(keep: torch.Tensor | None, shape, which: str) -> torch.Tensor:
    """Per sequence, the position of its first or last non-padding token (`keep`: the attention mask)."""
    if keep is None or tuple(keep.shape) != tuple(shape):
        return torch.full((shape[0],), 0 if which == "first" else shape[1] - 1, dtype=torch.long)
    k = keep.long()
    return k.argmax(1) if which == "first" else shape[1] - 1 - k.flip(1).argmax(1)


@contextlib.contextmanager
def forward_replaced(modules: Sequence[nn.Module], make: Callable[[nn.Module], Callable]) -> Iterator[None]:
    """Each module's `forward` replaced by `make(module)` inside the block (an instance attribute shadows the
    class's forward); afterwards each gets back what it had, including a wrapper that accelerate's device hooks
    set as an instance attribute (a model loaded with a device_map)."""
    saved = [(m, m.__dict__.get("forward")) for m in modules]
    for m in modules:
        m.forward = make(m)
    try:
        yield
    finally:
        for m, before in saved:
            if before is None:
                del m.forward
            else:
                m.forward = before


class Resume:
    """Passes over the same model calls that each reach one layer further, without re-running the layers
    before: the output of the last layer every pass has finished is cached per call, and in the next pass the
    layers up to it return that output instead of running. A pass that stops inside layer `upto` also runs
    (and caches) layer upto - 1 when that layer is not cached yet, so passes may advance one layer at a time
    while earlier layers' weights or masks stay as they were when they ran. Set `call` before each model call.
    """

    def __init__(self, model: nn.Module, n_calls: int):
        from synprune.arch import get_adapter

        self.blocks = get_adapter(model).layers(model)
        self.level = -1  # every call's output of layer `level` is cached
        self.cache: list = [None] * n_calls
        self.call = 0

    @contextlib.contextmanager
    def reaching(self, upto: int) -> Iterator[None]:
        start = self.level + 1
        capture = upto - 1 if upto - 1 > self.level else None
        fresh: list = [None] * len(self.cache)
        hooks = []
        if capture is not None:
            def keep(module, args, output):
                fresh[self.call] = output
            hooks.append(self.blocks[capture].register_forward_hook(keep))
        try:
            with forward_replaced(self.blocks[:start], lambda block: self._cached):
                yield
        finally:
            for h in hooks:
                h.remove()
        if capture is not None:
            self.cache, self.level = fresh, capture

    def _cached(self, *args, **kwargs):
        return self.cache[self.call]
