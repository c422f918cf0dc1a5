"""Figures of `synprune explain`: layer x head heat maps per relation and word-level attention maps."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from synprune.io import write_png

ARROW = {"dep2head": "dep→head", "head2dep": "head→dep"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    return write_png(path, fig)


def _panel(ax, values: np.ndarray, title: str, pruned: set | None, vmin=None, vmax=None, cmap="viridis"):
    im = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_title(title, fontsize=7)
    L, H = values.shape
    ax.set_xticks(range(0, H, max(1, H // 6)))
    ax.set_yticks(range(L))
    ax.tick_params(labelsize=6)
    if pruned:
        ls, hs = zip(*sorted(pruned))
        ax.scatter(hs, ls, marker="x", s=14, c="red", linewidths=1)
    return im


def heatmaps(ex, relations: Sequence[int], path: Path, pruned: set | None = None, title: str = "") -> Path:
    """`ex`: an `explain.heads.Explanation`. One figure: four head-profile panels (SAP penalty, special-token and punctuation share, entropy), then
    each relation's accuracy per head in the direction of its best head (colour scale 0..1)."""
    plt = _pyplot()
    panels = 4 + len(relations)
    cols = 6
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.6), squeeze=False, layout="constrained")
    flat = axes.ravel()
    profile = [(ex.sap_penalty_per_pair, "SAP penalty per arc"), (ex.special_share, "share on [CLS]/[SEP]"),
               (ex.punct_share, "share on punctuation"), (ex.entropy, "entropy (nats)")]
    for ax, (values, name) in zip(flat, profile):
        cb = fig.colorbar(_panel(ax, values, name, pruned, cmap="magma"), ax=ax, fraction=0.046, pad=0.02)
        cb.ax.tick_params(labelsize=6)
    for ax, r in zip(flat[4:], relations):
        d, l, h = ex.best_head(r)
        name = (f"{ex.labels[r]} ({ARROW[ex.directions[d]]}), n={int(ex.counts[r])}\n"
                f"best {l}:{h} {ex.accuracy[d, r, l, h]:.2f}, offset {int(ex.baseline_offset[r]):+d} {ex.baseline_accuracy[r]:.2f}")
        im = _panel(ax, ex.accuracy[d, r], name, pruned, vmin=0, vmax=1)
    for ax in flat[panels:]:
        ax.axis("off")
    if relations:
        fig.colorbar(im, ax=list(flat[4:panels]), fraction=0.02, shrink=0.6, label="accuracy")
    fig.suptitle((title + "\n" if title else "") + "Per-head profile and relation accuracy (rows: layers, columns: heads; 0-indexed)",
                 fontsize=9)
    return _save(fig, path)


def attention_maps(maps: Sequence, heads: Sequence, path: Path) -> Path:
    """`maps`: `explain.heads.SentenceMap`s; `heads`: `MapHead`s. Rows: sentences; columns: heads. Each panel is word-level attention (row word attends to column word).
    Circles mark the arcs of the head's relation in its direction (dep->head: row dependent, column head)."""
    plt = _pyplot()
    rows, cols = len(maps), len(heads)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.6, rows * 3.6), squeeze=False, layout="constrained")
    for i, m in enumerate(maps):
        for j, ((layer, head), relation, direction) in enumerate(heads):
            ax = axes[i, j]
            ax.imshow(m.maps[j], cmap="Blues", vmin=0, vmax=max(float(m.maps[j].max()), 1e-6))
            n = len(m.words)
            ax.set_xticks(range(n))
            ax.set_xticklabels(m.words, rotation=90, fontsize=6)
            ax.set_yticks(range(n))
            ax.set_yticklabels(m.words, fontsize=6)
            marks = [(hd, dp) for hd, dp, r in m.arcs if relation is None or r == relation]
            if marks:
                pts = [(hd, dp) if direction == "dep2head" else (dp, hd) for hd, dp in marks]  # (column, row)
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, s=40, facecolors="none", edgecolors="red", linewidths=0.8)
            if i == 0:
                what = f"{relation}, {ARROW[direction]}" if relation else f"all arcs, {ARROW[direction]}"
                ax.set_title(f"head {layer}:{head} ({what})", fontsize=8)
    fig.suptitle("Word-level attention (rows attend to columns); circles: gold/parser arcs", fontsize=9)
    return _save(fig, path)
