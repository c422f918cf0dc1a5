"""Feed-forward neurons as prunable units: their scores (the neuron half of a method) and the statistics the
scores and the repairs read on the calibration data.

A neuron scorer is a registered function `(ctx, cfg) -> NeuronScores` (layers x neurons, higher = more
important):
- `fisher`: sum over calibration batches of (dL/dm)^2 for the neuron mask m (Kwon et al. 2022); task loss
  when every example has a label, else the output Fisher;
- `output-fisher`: the same with the label-free objective r . f(x) (SPEC 5);
- `magnitude`: L2 norm of the neuron's weights (its up/gate rows and its down column); needs no data;
- `wanda`: activation x weight norm (Wanda-sp / FLAP): ||x_i|| over the calibration tokens times the L2 norm
  of the down projection's column i.
`--neuron-score auto` takes the method's natural partner (`PARTNER`): gradient methods their own Fisher,
SAP/sapx the label-free output Fisher (sapx fuses with it already), magnitude/random magnitude.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from synprune.model.activations import Tap, model_inputs
from synprune.arch import ffn_handles, weight_rows
from synprune.errors import SynpruneError
from synprune.model.masking import neuron_grid

LABEL_FREE = {"output-fisher", "magnitude", "wanda"}
PARTNER = {"fisher": "fisher", "kwon": "fisher", "michel": "fisher", "michel-iterative": "fisher",
           "output-fisher": "output-fisher", "sap": "output-fisher", "sapx": "output-fisher",
           "magnitude": "magnitude", "random": "magnitude", "recon": "fisher"}
GRADIENT = {"fisher", "output-fisher"}


@dataclass
class NeuronScores:
    scores: np.ndarray  # (layers, neurons), higher = keep
    kind: str  # the scorer's name
    grads: np.ndarray | None = None  # (batches, layers, neurons) mask gradients, for the search's rearrangement
    details: dict = field(default_factory=dict)


NeuronFn = Callable[..., NeuronScores]
SCORERS: dict[str, NeuronFn] = {}


@dataclass(frozen=True)
class NeuronOptions:
    """`--neuron-score`: how `--units heads,neurons` scores neurons (`auto`: the method's partner, `PARTNER`)."""

    neuron_score: str = "auto"

    def validate(self) -> "NeuronOptions":
        if self.neuron_score != "auto" and self.neuron_score not in SCORERS:
            raise SynpruneError(f"--neuron-score {self.neuron_score!r}: use auto or one of {', '.join(sorted(SCORERS))}")
        return self


def register(name: str) -> Callable[[NeuronFn], NeuronFn]:
    def deco(fn: NeuronFn) -> NeuronFn:
        SCORERS[name] = fn
        return fn

    return deco


def scorer_name(cfg) -> str:
    """The neuron scorer a config asks for (`auto`: the method's partner; output-Fisher for unknown methods)."""
    name = cfg.neuron_score
    if name == "auto":
        name = PARTNER.get(cfg.method, "output-fisher")
    if name not in SCORERS:
        raise SynpruneError(f"--neuron-score {name!r}: use auto or one of {', '.join(sorted(SCORERS))}")
    return name


def neuron_scores(ctx, cfg) -> NeuronScores:
    """The configured neuron scores, memoized per calibration context."""
    name = scorer_name(cfg)
    key = ("neuron-scores", name, cfg.seed if name == "output-fisher" or name == "fisher" else None)
    with ctx.timed("score_neurons"):
        return ctx.memo(key, lambda: SCORERS[name](ctx, cfg))


def _gradient_scores(ctx, cfg, kind: str | None, name: str) -> NeuronScores:
    from synprune.methods.gradient import unit_gradients

    _, grads, used = unit_gradients(ctx, cfg, kind)
    return NeuronScores((grads ** 2).sum(0), name, grads, {"loss": used, "scores": "sum over batches of (dL/dm)^2"})


@register("fisher")
def fisher(ctx, cfg) -> NeuronScores:
    return _gradient_scores(ctx, cfg, None, "fisher")


@register("output-fisher")
def output_fisher(ctx, cfg) -> NeuronScores:
    from synprune.methods.gradient import OUTPUT_FISHER

    return _gradient_scores(ctx, cfg, OUTPUT_FISHER, "output-fisher")


def down_column_norms(model) -> np.ndarray:
    out = np.zeros(neuron_grid(model))
    for f in ffn_handles(model):
        out[f.layer, f.kept] = weight_rows(f.down).norm(dim=0).numpy()
    return out


@register("magnitude")
def magnitude(ctx, cfg) -> NeuronScores:
    model = ctx.tm.model
    out = down_column_norms(model) ** 2
    for f in ffn_handles(model):
        for up in f.up:
            rows = weight_rows(up).pow(2).sum(1).reshape(f.up_parts, -1).sum(0)
            out[f.layer, f.kept] += rows.numpy()
    return NeuronScores(np.sqrt(out), "magnitude", details={"scores": "L2 norm of the neuron's up rows and down column"})


def down_input_stats(ctx) -> dict[str, np.ndarray]:
    """Per neuron over the calibration tokens (padding excluded): `mean` and `sq` (sum of squares) of the down
    projection's input, and the token count `n`; memoized per context."""

    def compute() -> dict[str, np.ndarray]:
        grid = neuron_grid(ctx.tm.model)
        total, sq, count = np.zeros(grid), np.zeros(grid), np.zeros(grid[0])
        handles = {f.layer: f for f in ffn_handles(ctx.tm.model)}

        def add(layer, x: torch.Tensor) -> None:
            kept = handles[layer].kept
            total[layer, kept] += x.sum(0).numpy()
            sq[layer, kept] += x.pow(2).sum(0).numpy()
            count[layer] += x.shape[0]

        with ctx.timed("activations"), Tap({l: f.down for l, f in handles.items()}, add) as tap:
            for inputs in model_inputs(ctx.tm, ctx.prepared.batches):
                tap.run(ctx.tm.model, inputs)
        return {"mean": total / np.maximum(count, 1)[:, None], "sq": sq, "n": count}

    return ctx.memo("down-input-stats", compute)


@register("wanda")
def wanda(ctx, cfg) -> NeuronScores:
    stats = down_input_stats(ctx)
    scores = np.sqrt(stats["sq"]) * down_column_norms(ctx.tm.model)
    return NeuronScores(scores, "wanda", details={"scores": "||x_i|| over calibration tokens x ||down column i||"})


@register("layer-fisher")
def layer_fisher(ctx, cfg) -> NeuronScores:
    """sum over tokens of x_i^2 ||down column i||^2: the Fisher diagonal of the down projection's output
    reconstruction error (methods/layerlocal.py)."""
    from .layerlocal import dense_moments, neuron_scores as layer_scores

    moments = dense_moments(ctx, "ffn")
    out = np.zeros(neuron_grid(ctx.tm.model))
    for f in ffn_handles(ctx.tm.model):
        out[f.layer, f.kept] = layer_scores("layer-fisher", f, moments[f.layer])
    return NeuronScores(out, "layer-fisher", details={"scores": "sum over tokens of x_i^2 ||down column i||^2"})
