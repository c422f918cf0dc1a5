"""Can SAP tell heads apart when they attend to many relations? (the SAP paper's open question 1)

Per head, `explain`'s relations-served measure (the effective number of dependency relations on which the head
beats the best fixed-offset baseline: exp of the entropy of its excess-accuracy profile) against how wrong
SAP's ranking is about that head. The reference ranking is each head's own effect: the calibration metric with
that head alone removed (CF's single-head ablation), least harmful first. A head's ranking error is
|its position in the method's order - its position in the reference| / (heads - 1); a random order's expected
error is 1/3. The heads are split at the median of relations served; within each half the table gives each
method's rank correlation with the reference (can it order those heads?) and its mean error. fisher and entropy
are shown for scale: if their errors concentrate on the same heads, it is not SAP's problem alone.

    python benchmarks/relation_diversity.py --out runs/relation_diversity --img docs/img/relation_diversity.png
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from synprune.calibrate.context import Calibration
from synprune.config import PruneConfig
from synprune.evaluation.evaluate import task_metrics
from synprune.explain.heads import compute
from synprune.io import atomic_write_json, atomic_write_text, write_png
from synprune.cf.layercache import AblationScorer
from synprune.methods import score
from synprune.model.load import as_task_model
from synprune.progress import bar
from synprune.data.tasks import load_task, make_split

METHODS = ("sap", "fisher", "entropy")


def positions(order, grid) -> np.ndarray:
    pos = np.zeros(grid)
    for i, h in enumerate(order):
        pos[h] = i
    return pos


def single_head_drops(ctx: Calibration) -> tuple[np.ndarray, float]:
    """Dense calibration metric minus the metric with each head alone removed (higher = more important)."""
    L, H = ctx.tm.grid
    scorer = AblationScorer(ctx.tm, ctx.prepared, ctx.metric_names[0], set(range(L)), fast=True)
    drops = np.zeros((L, H))
    with bar("single-head ablations", L * H) as advance:
        for l in range(L):
            for h in range(H):
                drops[l, h] = scorer.dense - scorer.metric([(l, h)])
                advance()
    return drops, scorer.dense


def analyse(served: np.ndarray, drops: np.ndarray, orders: dict[str, list]) -> dict:
    grid = served.shape
    n = served.size
    ref = np.argsort(np.argsort(drops.ravel(), kind="stable"), kind="stable").reshape(grid)  # least harmful first
    high = served > np.median(served)
    out = {"groups": {"all": int(n), "serve many (> median)": int(high.sum()), "serve few (<= median)": int((~high).sum())},
           "median_served": float(np.median(served)), "methods": {}}
    for m, order in orders.items():
        pos = positions(order, grid)
        err = np.abs(pos - ref) / (n - 1)
        row = {"error": err.tolist()}
        for name, mask in (("all", np.ones(grid, bool)), ("serve many (> median)", high), ("serve few (<= median)", ~high)):
            row[name] = {"spearman": float(spearmanr(pos[mask], ref[mask])[0]), "mean_error": float(err[mask].mean())}
        row["error_vs_served"] = float(spearmanr(served.ravel(), err.ravel())[0])
        out["methods"][m] = row
    return out


def markdown(res: dict, meta: dict) -> str:
    groups = list(res["groups"])
    lines = [f"{meta['model']} on {meta['task']}, {meta['calib_size']} calibration examples; reference: calibration "
             f"{meta['metric']} with one head removed (dense {meta['dense']:.2f}); relations served: median "
             f"{res['median_served']:.2f}, range {meta['served_min']:.2f}-{meta['served_max']:.2f}.", "",
             "| method | " + " | ".join(f"{g} ({res['groups'][g]} heads): rank corr. / mean error" for g in groups)
             + " | corr(relations served, error) |", "|---|" + "---:|" * (len(groups) + 1)]
    for m, row in res["methods"].items():
        lines.append(f"| {m} | " + " | ".join(f"{row[g]['spearman']:+.2f} / {row[g]['mean_error']:.2f}" for g in groups)
                     + f" | {row['error_vs_served']:+.2f} |")
    lines.append("| random order (expected) | " + " | ".join("0.00 / 0.33" for _ in groups) + " | 0.00 |")
    lines.append("")
    lines.append(f"SAP's penalty against relations served: rank correlation {meta['sap_vs_served']:+.2f} "
                 f"(positive = SAP prunes the heads that serve many relations first).")
    return "\n".join(lines) + "\n"


def plot(served: np.ndarray, res: dict, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(res["methods"])
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.6), sharey=True)
    for ax, m in zip(np.atleast_1d(axes), methods):
        err = np.array(res["methods"][m]["error"]).ravel()
        ax.scatter(served.ravel(), err, s=12, alpha=0.7)
        ax.axhline(1 / 3, color="grey", ls="--", lw=0.8, label="random order")
        ax.axvline(res["median_served"], color="black", ls=":", lw=0.8, label="median")
        ax.set_xlabel("relations served (effective number)")
        ax.set_title(f"{m}: corr {res['methods'][m]['error_vs_served']:+.2f}", fontsize=9)
    np.atleast_1d(axes)[0].set_ylabel("ranking error (0 = right place)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return write_png(path, fig, tight=False)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the bundled MiniLM)")
    ap.add_argument("--task", default="stsb")
    ap.add_argument("--glue-dir", default=None)
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--min-arcs", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("runs/relation_diversity"))
    ap.add_argument("--img", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cfg = PruneConfig(calib_size=args.calib_size).validate()
    tm = as_task_model(args.model)
    data = load_task(args.task, args.glue_dir)
    ctx = Calibration(tm, make_split(data, cfg.calib_size, cfg.seed).calibration, cfg, task_metrics(tm, data))
    ex = compute(ctx, cfg)
    _, served, _ = ex.relations_served(args.min_arcs)
    orders = {m: score(ctx, cfg.replace(method=m)).order for m in METHODS}
    drops, dense = single_head_drops(ctx)
    res = analyse(served, drops, orders)
    meta = {"model": tm.name, "task": data.name, "calib_size": len(ctx.examples), "metric": ctx.metric_names[0],
            "dense": dense, "served_min": float(served.min()), "served_max": float(served.max()),
            "sap_vs_served": float(spearmanr(ex.sap_penalty.ravel(), served.ravel())[0]),
            "seconds": round(time.perf_counter() - t0, 1)}
    text = markdown(res, meta)
    atomic_write_text(args.out / "table.md", text)
    atomic_write_json(args.out / "results.json", {"meta": meta, **res, "relations_served": served.tolist(),
                                                  "single_head_drop": drops.tolist()})
    title = f"{tm.name} / {data.name}: ranking error against relations served"
    for target in filter(None, (args.out / "relation_diversity.png", args.img)):
        plot(served, res, target, title)
    print(text)
    print(f"{meta['seconds']:.0f} s; wrote {args.out / 'table.md'}, results.json and the plot")
    return {"meta": meta, **res}


if __name__ == "__main__":
    main()
