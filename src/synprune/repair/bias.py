"""`--repair bias`: FLAP's bias compensation (An et al. 2024). A pruned unit's output is replaced by its mean
over the calibration tokens: each attention output projection's bias gains W_h mean(z_h) summed over its
pruned heads, each down projection's bias W_i mean(x_i) summed over its pruned neurons (means from the dense
model). A layer whose heads all go loses its whole attention block, so it gets no compensation.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Collection

import torch
from torch import nn

from synprune.model.activations import Tap
from ..arch import attention_handles, ffn_handles, weight_rows
from . import Repair, Unit


@torch.no_grad()
def input_means(model: nn.Module, inputs: list[dict], modules: dict, pooled: str | None = None) -> dict:
    """Mean input of each module (keyed as in `modules`) over the non-padding tokens of `inputs`, dense model;
    `pooled` ("first" / "last"): over each sequence's pooled token only (`activations.Tap`)."""
    if not modules:
        return {}
    total: dict = {}
    count: dict = defaultdict(int)

    def add(key, x):
        total[key] = total.get(key, 0) + x.sum(0)
        count[key] += x.shape[0]

    with Tap(modules, add, pooled=pooled) as tap:
        for batch in inputs:
            tap.run(model, batch)
    return {k: v / max(1, count[k]) for k, v in total.items()}


def bias_compensation(model: nn.Module, inputs: list[dict], heads: list[Unit], neurons: list[Unit] | None,
                      pooled: str | None = None, pooled_layers: Collection[int] = ()) -> Repair:
    """FLAP's compensation; the layers in `pooled_layers` take their means at the `pooled` token only (the one a
    classifier reads), for `benchmarks/bias_classifiers.py` (it does not rescue the classifiers measured there)."""
    pruned_h: dict[int, list[int]] = defaultdict(list)
    for l, h in heads:
        pruned_h[l].append(h)
    pruned_n: dict[int, list[int]] = defaultdict(list)
    for l, n in neurons or ():
        pruned_n[l].append(n)
    attn = {h.layer: h for h in attention_handles(model)
            if pruned_h.get(h.layer) and len(set(pruned_h[h.layer]) & set(h.kept_heads)) < h.num_heads}
    ffn = {f.layer: f for f in ffn_handles(model) if pruned_n.get(f.layer)}
    modules = {**{("attn", l): h.out_proj for l, h in attn.items()}, **{("ffn", l): f.down for l, f in ffn.items()}}
    layers = set(pooled_layers) if pooled else set()
    at_pool = {k for k in modules if k[1] in layers}
    means = input_means(model, inputs, {k: m for k, m in modules.items() if k not in at_pool})
    if at_pool:
        means.update(input_means(model, inputs, {k: modules[k] for k in at_pool}, pooled))
    rep = Repair("bias")
    for l, h in attn.items():
        current = h.kept_heads
        cols = [current.index(q) * h.head_dim + j for q in pruned_h[l] if q in current for j in range(h.head_dim)]
        W = weight_rows(h.out_proj)
        rep.attn_bias[l] = (W[:, cols] @ means[("attn", l)][cols]).float()
    for l, f in ffn.items():
        current = f.kept
        cols = [current.index(n) for n in pruned_n[l] if n in current]
        rep.ffn_bias[l] = (weight_rows(f.down)[:, cols] @ means[("ffn", l)][cols]).float()
    return rep
