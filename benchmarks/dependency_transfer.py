"""Do SAP's dependency rankings transfer between datasets? (the SAP paper's first open check)

For each fine-tuned task model (SST-2, CoLA, MRPC, STS-B), SAP at one sparsity (default 0.5) with the
dependency ranking and weights computed on each of the four datasets (`--dependencies-from`; the diagonal is
the model's own calibration data), and random heads (seeds 0, 1, 2) for scale. Attention is always read on the
model's own calibration sample (512 seeded train examples); evaluation is all of dev. Also: how similar the
rankings are (Spearman correlation of the label weights over the union of two datasets' labels, a label a
dataset never shows weighing 0) and how much of the pruned set a foreign ranking changes (Jaccard with the own ranking's).

    python benchmarks/dependency_transfer.py --out runs/transfer [--budget-minutes 30]

Finished runs are read back, so an interrupted or time-limited run resumes when started again.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import TASKS, Deadline, TaskRuns, mean_sd  # noqa: E402

from synprune.config import PruneConfig  # noqa: E402
from synprune.io import atomic_write_json, atomic_write_text  # noqa: E402


def weight_correlations(rankings: dict[str, list[dict]]) -> dict[tuple[str, str], float]:
    """Spearman correlation of SAP's label weights between two sources, over the union of their labels."""
    weights = {s: {r["label"]: r["weight"] for r in rk} for s, rk in rankings.items()}

    def corr(a: dict, b: dict) -> float:
        labels = sorted(a.keys() | b.keys())
        return float(spearmanr([a.get(l, 0) for l in labels], [b.get(l, 0) for l in labels])[0])

    return {(a, b): corr(weights[a], weights[b]) for a in weights for b in weights}


def jaccard(a, b) -> float:
    a, b = {tuple(h) for h in a}, {tuple(h) for h in b}
    return len(a & b) / max(len(a | b), 1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help="task models (rows)")
    ap.add_argument("--sources", default=",".join(TASKS), help="ranking sources (columns)")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--seeds", default="0,1,2", help="random's seeds")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("runs/transfer"))
    ap.add_argument("--budget-minutes", type=float, default=None, help="start no new run after this long")
    args = ap.parse_args(argv)
    tasks, sources = args.tasks.split(","), args.sources.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    deadline = Deadline(args.budget_minutes)
    t0 = time.perf_counter()
    cells: dict[str, dict] = {}
    for task in tasks:
        runs = TaskRuns(task, PruneConfig(k=args.k))
        cells[task] = {"sap": {}, "random": []}
        for src in sources:
            own = src == task
            folder = args.out / task / f"sap_from-{'own' if own else src}_s{args.sparsity:g}"
            res = runs.result(folder, deadline, method="sap", sparsity=args.sparsity, dependencies_from=None if own else src)
            if res:
                cells[task]["sap"][src] = res
        for seed in seeds:
            res = runs.result(args.out / task / f"random_s{args.sparsity:g}_seed{seed}", deadline, method="random",
                              sparsity=args.sparsity, seed=seed)
            if res:
                cells[task]["random"].append(res)
        cells[task]["skipped"] = runs.skipped
    return report(cells, tasks, sources, args, time.perf_counter() - t0)


def report(cells: dict, tasks: list[str], sources: list[str], args, seconds: float) -> dict:
    lines = [f"SAP at sparsity {args.sparsity:g} (k={args.k}) on each task model (rows) with the dependency ranking of each "
             "dataset (columns; **own** = the model's own calibration data); dev metric; random: mean ± sd over seeds "
             f"{args.seeds}.", "",
             "| task model (metric) | dense | " + " | ".join(f"ranking from {s}" for s in sources) + " | random |",
             "|---|---:|" + "---:|" * (len(sources) + 1)]
    rankings: dict[str, list[dict]] = {}
    overlaps: dict[str, dict[str, float]] = {}
    for task in tasks:
        c = cells[task]
        any_res = next(iter(c["sap"].values()), None) or (c["random"][0] if c["random"] else None)
        if any_res is None:
            lines.append(f"| {task} | - | " + " | ".join("-" for _ in sources) + " | - |")
            continue
        m = any_res["metric"]
        own = c["sap"].get(task)
        texts = []
        for s in sources:
            r = c["sap"].get(s)
            if r is None:
                texts.append("-")
                continue
            rankings.setdefault(s, r["dependency_ranking"])  # the same from any run: s's seeded calibration sample
            t = f"{r['metric']['pruned']:.2f}"
            texts.append(f"**{t}**" if s == task else t)
            if own is not None:
                overlaps.setdefault(task, {})[s] = jaccard(r["pruned_heads"], own["pruned_heads"])
        rnd = [r["metric"]["pruned"] for r in c["random"]]
        rnd_text = "-" if not rnd else (f"{mean_sd(rnd)[0]:.2f} ± {mean_sd(rnd)[1]:.2f}")
        lines.append(f"| {task} ({m['name']}) | {m['dense']:.2f} | " + " | ".join(texts) + f" | {rnd_text} |")
    corr = weight_correlations(rankings) if len(rankings) > 1 else {}
    if corr:
        names = [s for s in sources if s in rankings]
        lines += ["", f"Spearman correlation of SAP's label weights (k={args.k}) between the datasets' rankings:", "",
                  "| | " + " | ".join(names) + " | top-k labels |", "|---|" + "---:|" * len(names) + "---|"]
        for a in names:
            top = ", ".join(r["label"] for r in rankings[a] if r["top_k"])
            lines.append(f"| {a} | " + " | ".join(f"{corr[(a, b)]:.2f}" for b in names) + f" | {top} |")
    if overlaps:
        lines += ["", "Jaccard overlap of the pruned heads with those of the model's own ranking:", "",
                  "| task model | " + " | ".join(f"from {s}" for s in sources) + " |", "|---|" + "---:|" * len(sources)]
        for task, row in overlaps.items():
            lines.append(f"| {task} | " + " | ".join(f"{row[s]:.2f}" if s in row else "-" for s in sources) + " |")
    missing = [f for t in tasks for f in cells[t].get("skipped", [])]
    if missing:
        lines += ["", f"Not run within the time budget ({len(missing)} runs): rerun the same command to complete."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "table.md", text)
    atomic_write_json(args.out / "summary.json", {
        "table": {t: {"sap": {s: r["metric"]["pruned"] for s, r in cells[t]["sap"].items()},
                      "random": [r["metric"]["pruned"] for r in cells[t]["random"]]} for t in tasks},
        "weight_correlation": {f"{a}|{b}": v for (a, b), v in corr.items()}, "jaccard_with_own": overlaps,
        "missing": missing, "seconds": round(seconds, 1)})
    print(text)
    print(f"{seconds:.0f} s; wrote {args.out / 'table.md'} and summary.json")
    return {"cells": cells, "corr": corr, "overlaps": overlaps, "missing": missing}


if __name__ == "__main__":
    main()
