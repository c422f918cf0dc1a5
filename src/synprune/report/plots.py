"""The sweep's figures, drawn with matplotlib's Agg canvas (no display, no pyplot state) into PNG bytes.

Every function takes plain data (result rows, run result dicts as written to result.json), so a report can be
redrawn from a sweep's folder alone.
"""
from __future__ import annotations

import math
import statistics
import textwrap
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io import png_bytes
from synprune.data.metrics import direction_text
from .table import group_label, spec_label

SPREAD = "min-max over seeds"  # what the bands show (stated in captions)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    return png_bytes(fig)


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _by_group(rows: Sequence[dict], sparsity: float | None = None) -> dict[str, dict[float, list[float]]]:
    groups: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        if sparsity is None or float(r["sparsity"]) == sparsity:
            groups.setdefault(group_label(r), {}).setdefault(float(r["sparsity"]), []).append(float(r["pruned"]))
    return groups


def _metric_label(name: str) -> str:
    """The axis label says which way is better (perplexity: lower)."""
    return f"{name} ({direction_text(name)})"


def metric_vs_sparsity(rows: Sequence[dict]) -> bytes:
    """(1) The metric against sparsity, a line per method, dense as a horizontal line, seed spread as a band."""
    groups = _by_group(rows)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    for (label, by_s), color in zip(groups.items(), _colors(len(groups))):
        xs = sorted(by_s)
        mean = [statistics.fmean(by_s[s]) for s in xs]
        seeded = any(len(by_s[s]) > 1 for s in xs)
        ax.plot(xs, mean, marker="o", color=color, linestyle="--" if "+cf" in label else "-",
                label=f"{label} (mean, band: {SPREAD})" if seeded else label)
        if seeded:
            ax.fill_between(xs, [min(by_s[s]) for s in xs], [max(by_s[s]) for s in xs], color=color, alpha=0.2)
    ax.axhline(float(rows[0]["dense"]), color="black", linestyle=":", label="dense (unpruned)")
    ax.set_xlabel("sparsity (fraction of heads pruned)")
    ax.set_ylabel(_metric_label(rows[0]["metric_name"]))
    ax.set_xticks(sorted({float(r["sparsity"]) for r in rows}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(f"{rows[0]['metric_name']} after pruning, by method")
    return _png(fig)


def _representative_runs(rows: Sequence[dict], sparsity: float) -> dict[str, str]:
    """For each method (and grid variant): the run at `sparsity` with the lowest seed."""
    chosen: dict[str, dict] = {}
    for r in rows:
        if float(r["sparsity"]) == sparsity:
            label = group_label(r)
            if label not in chosen or int(r["seed"]) < int(chosen[label]["seed"]):
                chosen[label] = r
    return {label: r["run"] for label, r in chosen.items()}


def head_scores(rows: Sequence[dict], results: dict[str, dict], sparsity: float) -> bytes:
    """(2) Layer x head heat maps of each method's scores (its own units), pruned heads marked with x."""
    runs = _representative_runs(rows, sparsity)
    n = len(runs)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    L, H = np.asarray(results[next(iter(runs.values()))]["head_scores"]).shape
    fig = Figure(figsize=(cols * max(3.6, 1.4 + 0.4 * H), nrows * max(2.6, 1.3 + 0.4 * L)), layout="constrained")
    for i, (label, run) in enumerate(runs.items()):
        res = results[run]
        ax = fig.add_subplot(nrows, cols, i + 1)
        im = ax.imshow(np.asarray(res["head_scores"], dtype=float), cmap="viridis", aspect="equal")
        pruned = np.asarray(res["pruned_heads"]).reshape(-1, 2)
        ax.scatter(pruned[:, 1], pruned[:, 0], marker="x", color="red", s=40, linewidths=1.5)
        ax.set_title(textwrap.fill(f"{label}: {len(pruned)} pruned", 34), fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(H))
        ax.set_yticks(range(L))
        ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=ax, shrink=0.9).ax.tick_params(labelsize=7)
    fig.suptitle(f"Head scores per method (each in its own units); red x = pruned at sparsity {sparsity:g}", fontsize=10)
    return _png(fig)


def dependency_ranking(result: dict) -> bytes:
    """(3) SAP's dependency ranking: arc count per label as bars, SAP weight above each, top-k coloured."""
    ranking = result["dependency_ranking"]
    k = result["config"]["k"]
    fig = Figure(figsize=(max(6.0, 0.32 * len(ranking) + 1.5), 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(ranking))
    counts = [r["count"] for r in ranking]
    colors = ["tab:orange" if r["top_k"] else "tab:gray" for r in ranking]
    ax.bar(x, counts, color=colors)
    for xi, r in zip(x, ranking):
        ax.annotate(str(r["weight"]), (xi, r["count"]), xytext=(0, 2), textcoords="offset points", ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(x, [r["label"] for r in ranking], rotation=90, fontsize=8)
    ax.set_ylabel("arcs in the calibration data")
    ax.set_title(f"Dependency ranking (k={k}): bars = arc counts, numbers = SAP weights, orange = top-{k}", fontsize=10)
    ax.margins(y=0.12)
    return _png(fig)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def grid_effect(rows: Sequence[dict], grid: dict[str, list], key: str) -> bytes:
    """(4) The metric against one grid option's values, a panel per sparsity; methods the option does not
    affect appear as dotted horizontal lines for reference."""
    sparsities = sorted({float(r["sparsity"]) for r in rows})
    values = grid[key]
    numeric = all(_is_number(v) for v in values)
    pos = {repr(v): (float(v) if numeric else i) for i, v in enumerate(values)}
    fig = Figure(figsize=(4.6 * len(sparsities) + 2.5, 4.2), layout="constrained")
    for j, s in enumerate(sparsities):
        ax = fig.add_subplot(1, len(sparsities), j + 1)
        lines: dict[str, dict[float, list[float]]] = {}
        flat: dict[str, list[float]] = {}
        for r in rows:
            if float(r["sparsity"]) != s:
                continue
            base = spec_label(r)
            if r.get(key, "") == "":
                flat.setdefault(base, []).append(float(r["pruned"]))
                continue
            others = ",".join(f"{k}={r[k]}" for k in grid if k != key and r.get(k, "") != "")
            label = f"{base} ({others})" if others else base
            lines.setdefault(label, {}).setdefault(pos[repr(r[key])], []).append(float(r["pruned"]))
        colors = _colors(len(lines) + len(flat))
        for (label, by_x), color in zip(lines.items(), colors):
            xs = sorted(by_x)
            ax.plot(xs, [statistics.fmean(by_x[x]) for x in xs], marker="o", color=color, label=label)
            if any(len(by_x[x]) > 1 for x in xs):
                ax.fill_between(xs, [min(by_x[x]) for x in xs], [max(by_x[x]) for x in xs], color=color, alpha=0.2)
        for (label, vals), color in zip(flat.items(), colors[len(lines):]):
            ax.axhline(statistics.fmean(vals), color=color, linestyle=":", label=f"{label} (no {key})")
        ax.axhline(float(rows[0]["dense"]), color="black", linestyle="--", linewidth=0.8, label="dense")
        ax.set_xticks(sorted(pos.values()), [str(v) for v in values], rotation=0 if numeric else 30, fontsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel(_metric_label(rows[0]["metric_name"]))
        ax.set_title(f"sparsity {s:g}", fontsize=10)
        ax.grid(alpha=0.3)
        if j == len(sparsities) - 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"Effect of {key} ({rows[0]['metric_name']}; bands: {SPREAD})", fontsize=11)
    return _png(fig)

