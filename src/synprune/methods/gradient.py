"""Gradient methods: how much the loss moves when a head's mask entry moves.

A head mask m (layers x heads, all ones) scales each head's output (`HeadMask`), so dL/dm_h is the first-order
change of the loss when head h is turned down. Per-batch gradients g_b are computed once per calibration
context and shared: `michel` sums |g_b| and normalises each layer (Michel et al. 2019), `fisher` sums g_b^2
(the head part of Kwon et al. 2022). `michel-iterative` masks the least important 10% and scores the rest again.

The loss is the task loss (`evaluate.loss`) when every calibration example has a label, and a causal LM's
next-token loss on text. Without labels it is
the output Fisher (SPEC 5): r . f(x) for seeded random unit vectors r, f the pooled output (the mean-pooled
embedding of the first text, the logits, or a causal LM's mean-pooled last hidden state); unlike a loss measured against the unpruned model, its gradient
is not zero there.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from synprune.evaluation import evaluate as E
from synprune.model.masking import UnitMask, mask_from_heads, neuron_grid
from synprune.model.load import TaskModel
from ..progress import bar
from . import Head, HeadScores, order_by, register

TASK_LOSS = "task-loss"
OUTPUT_FISHER = "output-fisher"
ITERATIVE_FRACTION = 0.1


def loss_kind(batches: Sequence[E.Batch]) -> str:
    """The task loss where every batch has labels or is a causal LM's text (next-token loss), else the output Fisher."""
    return TASK_LOSS if batches and all(b.labels is not None or b.lm for b in batches) else OUTPUT_FISHER


def unit_directions(seed: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Random unit rows, the same for a (seed, batch index) whatever the mask, so re-scoring compares like with like."""
    r = np.random.default_rng([seed, index]).standard_normal(shape)
    return torch.from_numpy(r / np.linalg.norm(r, axis=-1, keepdims=True))


def objective(tm: TaskModel, batch: E.Batch, kind: str, seed: int = 0, index: int = 0) -> torch.Tensor:
    """The scalar whose mask gradient scores the heads: the task loss, or the random output projection r . f(x)."""
    if kind == TASK_LOSS:
        return E.loss(tm, batch)
    if tm.kind == "embedding":
        f = E.embed(tm, batch.inputs)
    elif batch.lm:  # the logits (tokens x vocabulary) are too big to project: use the pooled last hidden state
        f = E.lm_pooled(tm, batch)
    else:
        f = E.outputs(tm, batch)
    r = unit_directions(seed, index, tuple(f.shape)).to(dtype=f.dtype, device=f.device)
    return (f * r).sum(-1).mean()


def mask_gradients(tm: TaskModel, batches: Sequence[E.Batch], mask: torch.Tensor, kind: str, seed: int = 0,
                   description: str = "mask gradients", neurons: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """(batches, layers, heads): d objective_b / d mask at `mask`, one backward pass per batch. With `neurons`,
    also (batches, layers, neurons): the gradient of the feed-forward neuron mask (all ones), from the same pass."""
    grads, ngrads = [], []
    ngrid = neuron_grid(tm.model)
    with bar(description, len(batches)) as advance:
        for i, batch in enumerate(batches):
            m = mask.detach().to(torch.float64).clone().requires_grad_(True)
            n = torch.ones(ngrid, dtype=torch.float64, requires_grad=True) if neurons else None
            with UnitMask(tm.model, m, n):
                value = objective(tm, batch, kind, seed, i)
            leaves = [m] + ([n] if neurons else [])
            got = torch.autograd.grad(value, leaves, allow_unused=True)  # None when no unit is left to mask
            grads.append(np.zeros(m.shape) if got[0] is None else got[0].numpy())
            if neurons:
                ngrads.append(np.zeros(ngrid) if got[1] is None else got[1].numpy())
            advance(1)
    heads = np.stack(grads) if grads else np.zeros((0, *tm.grid))
    if not neurons:
        return heads
    return heads, np.stack(ngrads) if ngrads else np.zeros((0, *ngrid))


def unit_gradients(ctx, cfg, kind: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-batch gradients of the head mask and the neuron mask (Kwon et al.'s Fisher inputs), memoized per
    calibration context; the head part is what `gradients` gives with nothing masked."""
    batches = ctx.prepared.batches
    kind = kind or loss_kind(batches)

    def compute() -> tuple[np.ndarray, np.ndarray]:
        with ctx.timed("gradients"):
            return mask_gradients(ctx.tm, batches, torch.ones(ctx.tm.grid), kind, cfg.seed, "mask gradients", neurons=True)

    heads, neurons = ctx.memo(("unit-gradients", kind, cfg.seed if kind == OUTPUT_FISHER else None), compute)
    return heads, neurons, kind


def gradients(ctx, cfg, masked: Sequence[Head] = (), kind: str | None = None) -> tuple[np.ndarray, str]:
    """Per-batch mask gradients over the calibration batches with `masked` heads at 0; the unmasked ones are
    memoized (with the neuron mask's, in one pass: see `unit_gradients`). `kind` defaults to the task loss when
    every example has a label, else the output Fisher."""
    if not masked:
        heads, _, kind = unit_gradients(ctx, cfg, kind)
        return heads, kind
    kind = kind or loss_kind(ctx.prepared.batches)
    with ctx.timed("gradients"):
        mask = mask_from_heads(ctx.tm.grid, masked)
        return mask_gradients(ctx.tm, ctx.prepared.batches, mask, kind, cfg.seed, f"mask gradients ({len(masked)} masked)"), kind


def layer_normalised(importance: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
    """Each layer's scores divided by their L2 norm over the layer's active heads (Michel et al.); inactive -> 0."""
    imp = importance * (1.0 if active is None else active)
    return imp / (np.sqrt((imp ** 2).sum(-1, keepdims=True)) + 1e-20)


def _details(kind: str, grads: np.ndarray, scores: str) -> dict:
    return {"loss": kind, "n_batches": int(grads.shape[0]), "scores": scores}


@register("michel", needs=("gradients", "labels"))
def michel(ctx, cfg) -> HeadScores:
    grads, kind = gradients(ctx, cfg)
    raw = np.abs(grads).sum(0)
    scores = layer_normalised(raw)
    return HeadScores(scores, order_by(scores, highest_first=False),
                      {**_details(kind, grads, "sum over batches of |dL/dm|, L2-normalised per layer"), "raw": raw.tolist()})


@register("michel-iterative", needs=("gradients", "labels"))
def michel_iterative(ctx, cfg) -> HeadScores:
    L, H = ctx.tm.grid
    step = math.ceil(ITERATIVE_FRACTION * L * H)
    masked: list[Head] = []
    steps: list[list[Head]] = []
    scores = np.zeros((L, H))
    while len(masked) < L * H:
        grads, kind = gradients(ctx, cfg, masked)
        active = mask_from_heads((L, H), masked).numpy()  # 1 for heads still in the model
        step_scores = layer_normalised(np.abs(grads).sum(0), active)
        gone = set(masked)
        chosen = [h for h in order_by(step_scores, highest_first=False) if h not in gone][:step]
        for h in chosen:
            scores[h] = step_scores[h]
        masked += chosen
        steps.append(chosen)
    return HeadScores(scores, masked, {
        **_details(kind, grads, "michel score when chosen (order: by step, then score)"),
        "step_size": step, "steps": [[list(h) for h in s] for s in steps]})


@register("fisher", needs=("gradients", "labels"))
def fisher(ctx, cfg) -> HeadScores:
    grads, kind = gradients(ctx, cfg)
    scores = (grads ** 2).sum(0)
    return HeadScores(scores, order_by(scores, highest_first=False), _details(kind, grads, "sum over batches of (dL/dm)^2"))


@register("output-fisher", needs=("gradients",))
def output_fisher(ctx, cfg) -> HeadScores:
    """`fisher` with the label-free objective (the output Fisher of SPEC 5) even where labels exist: how much a
    head moves the model's output, whatever the task. A label-free baseline, and sapx's gradient half."""
    grads, kind = gradients(ctx, cfg, kind=OUTPUT_FISHER)
    scores = (grads ** 2).sum(0)
    return HeadScores(scores, order_by(scores, highest_first=False), _details(kind, grads, "sum over batches of (d r.f(x)/dm)^2"))


@register("kwon", needs=("gradients", "labels"))
def kwon(ctx, cfg) -> HeadScores:
    """Kwon et al. 2022's whole recipe: Fisher scores of heads and neurons, the FLOPs-optimal mask search with
    rearrangement, least-squares repair (needs --budget flops:F). Its head scores are `fisher`'s; the rest
    comes with the method name (PruneConfig.resolved)."""
    return fisher(ctx, cfg)
