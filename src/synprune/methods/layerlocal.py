"""Unit scores that one decoder layer's own activations decide: what layer-streamed pruning (`--stream`,
synprune.run.stream) can compute with one layer in memory. All read the dense layer's inputs of its attention
output projection (query-head channels) and of its down projection (neurons), at the real tokens.

Head scores (`HEAD_SCORES`):
- `flap`: sum over the head's channels of Var(x_j) * ||W_o[:, j]||^2 (FLAP's fluctuation metric, as methods/flap.py);
- `magnitude`: L2 norm of the head's output-projection columns (as methods/magnitude.py; needs no data);
- `layer-fisher`: sum over tokens of ||W_h z_h(t)||^2, the head's contribution to the attention output. It is the
  Fisher (Gauss-Newton) diagonal of the sublayer's output reconstruction error ||y(m) - y(1)||^2 / 2 with
  respect to the head's mask m_h: dy/dm_h = W_h z_h, so the diagonal is sum_t ||W_h z_h(t)||^2. The gradient
  of that error itself is zero at m = 1 (the dense layer reproduces itself), which is why its curvature is the
  score; it needs no backward pass through the model, only the layer's activations.
Neuron scores (`NEURON_SCORES`): `wanda` (||x_i|| ||w_i||, as methods/neurons.py), `magnitude` (as there), and
`layer-fisher` (sum_t x_i(t)^2 ||w_i||^2: the same Fisher diagonal for the down projection, so the square of
wanda's score: the same order). With `layer-fisher` on both sides, head and neuron scores are on one scale (the
squared norm each unit adds to the residual stream), which the per-layer selection uses.

`layer-fisher` is also a registered head method and neuron scorer of the in-memory pipeline (the dense
model's activations, every layer in one pass).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from synprune.arch import AttentionHandles, FFNHandles, attention_handles, ffn_handles, weight_rows
from synprune.model.activations import Tap, model_inputs
from . import HeadScores, order_by, register

HEAD_SCORES = ("flap", "magnitude", "layer-fisher")
NEURON_SCORES = ("wanda", "magnitude", "layer-fisher")
PARTNER = {"flap": "wanda", "magnitude": "magnitude", "layer-fisher": "layer-fisher"}


@dataclass
class Moments:
    """Running statistics of one module input's channels over real tokens: count, sum, sum of squares, and
    (with `blocks`) the Gram matrix of each block of `blocks` consecutive channels (a head's dimensions)."""

    blocks: int = 0
    n: int = 0
    sum: torch.Tensor | None = None
    sq: torch.Tensor | None = None
    gram: torch.Tensor | None = None  # (channels / blocks, blocks, blocks)
    extra: dict = field(default_factory=dict)

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        if self.sum is None:
            self.sum, self.sq = torch.zeros(x.shape[1], dtype=torch.float64), torch.zeros(x.shape[1], dtype=torch.float64)
            if self.blocks:
                k = x.shape[1] // self.blocks
                self.gram = torch.zeros(k, self.blocks, self.blocks, dtype=torch.float64)
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.sq += (x * x).sum(0)
        if self.blocks:
            z = x.reshape(x.shape[0], -1, self.blocks)
            self.gram += torch.einsum("nhi,nhj->hij", z, z)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.n, 1)

    @property
    def variance(self) -> torch.Tensor:
        """Sample variance (n - 1), as FLAP uses."""
        n = max(self.n, 2)
        return ((self.sq - self.sum ** 2 / n) / (n - 1)).clamp(min=0)


def head_scores(kind: str, h: AttentionHandles, m: Moments) -> np.ndarray:
    """(kept heads,) scores of one layer's query heads, higher = keep."""
    W = weight_rows(h.out_proj)  # (hidden, kept heads x head_dim)
    w2 = (W ** 2).sum(0)
    if kind == "flap":
        return (m.variance * w2).reshape(-1, h.head_dim).sum(1).numpy()
    if kind == "magnitude":
        return w2.reshape(-1, h.head_dim).sum(1).sqrt().numpy()
    if kind == "layer-fisher":  # sum_t ||W_h z_h||^2 = trace(W_h^T W_h Z_h^T Z_h)
        Wh = W.reshape(W.shape[0], -1, h.head_dim).transpose(0, 1)  # (heads, hidden, dh)
        return torch.einsum("hdi,hdj,hij->h", Wh, Wh, m.gram).numpy()
    raise ValueError(kind)


def neuron_scores(kind: str, f: FFNHandles, m: Moments | None) -> np.ndarray:
    """(kept neurons,) scores of one layer's feed-forward neurons, higher = keep."""
    col2 = (weight_rows(f.down) ** 2).sum(0)
    if kind == "wanda":
        return (m.sq.sqrt() * col2.sqrt()).numpy()
    if kind == "layer-fisher":
        return (m.sq * col2).numpy()
    if kind == "magnitude":
        out = col2.clone()
        for up in f.up:
            out += (weight_rows(up) ** 2).sum(1).reshape(f.up_parts, -1).sum(0)
        return out.sqrt().numpy()
    raise ValueError(kind)


def dense_moments(ctx, key: str) -> dict[int, Moments]:
    """Every layer's output-projection input ("attn") or down-projection input ("ffn") moments, dense model."""

    def compute():
        model = ctx.tm.model
        handles = ({h.layer: h for h in attention_handles(model)} if key == "attn"
                   else {f.layer: f for f in ffn_handles(model)})
        moments = {l: Moments(h.head_dim if key == "attn" else 0) for l, h in handles.items()}
        modules = {l: (h.out_proj if key == "attn" else h.down) for l, h in handles.items()}
        with Tap(modules, lambda l, x: moments[l].add(x)) as tap:
            for inputs in model_inputs(ctx.tm, ctx.prepared.batches):
                tap.run(model, inputs)
        return moments

    return ctx.memo(("layer-moments", key), compute)


@register("layer-fisher", needs=("activations",))
def layer_fisher(ctx, cfg) -> HeadScores:
    moments = dense_moments(ctx, "attn")
    scores = np.zeros(ctx.tm.grid)
    for h in attention_handles(ctx.tm.model):
        scores[h.layer, h.kept_heads] = head_scores("layer-fisher", h, moments[h.layer])
    return HeadScores(scores, order_by(scores, highest_first=False), {
        "scores": "sum over calibration tokens of ||W_h z_h||^2: the Fisher diagonal of the attention output's "
                  "reconstruction error w.r.t. the head mask"})
