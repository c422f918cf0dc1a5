"""Heads and feed-forward neurons under a FLOPs budget (issue 13): Kwon et al.'s recipe (`kwon`) against
synprune's recipes, with and without retrain-free repair, on one task model per call.

    python benchmarks/ffn_table.py --task sst2 --out benchmarks/results/ffn_sst2.json
    python benchmarks/ffn_table.py --task stsb --model bundled --out benchmarks/results/ffn_stsb_bundled.json
    python benchmarks/ffn_table.py --task sst2 --calib-size 2048 --budgets 0.6,0.5 --recipes kwon --out benchmarks/results/ffn_sst2_kwon2048.json
    python benchmarks/ffn_table.py --render benchmarks/results/ffn_*.json --md benchmarks/results/ffn_table.md

One calibration context per task (seeded train sample, --calib-size), so gradients, parses and attention
statistics are computed once and shared by the recipes that use them (time to prune is still reported per
recipe as if it ran alone: its scoring passes + search + repair). Evaluation: all of dev (or --eval-size).
The task model is the cached fine-tuned classifier (`synprune finetune --task T`); this script does not build
one. Rows marked label-free never read a label (output Fisher, SAP's parses, repairs match dense outputs).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

RECIPES = [  # label, options, label-free
    ("kwon", dict(method="kwon"), False),
    ("fisher", dict(method="fisher", units="heads,neurons"), False),
    ("fisher+bias", dict(method="fisher", units="heads,neurons", repair="bias"), False),
    ("fisher+ls+bias", dict(method="fisher", units="heads,neurons", repair="ls+bias"), False),
    ("output-fisher", dict(method="output-fisher", units="heads,neurons"), True),
    ("output-fisher+ls", dict(method="output-fisher", units="heads,neurons", repair="ls"), True),
    ("output-fisher+bias", dict(method="output-fisher", units="heads,neurons", repair="bias"), True),
    ("output-fisher+ls+bias", dict(method="output-fisher", units="heads,neurons", repair="ls+bias"), True),
    ("sapx", dict(method="sapx", units="heads,neurons"), True),
    ("sapx+ls", dict(method="sapx", units="heads,neurons", repair="ls"), True),
    ("sapx+bias", dict(method="sapx", units="heads,neurons", repair="bias"), True),
]
HEADS_ONLY = ("fisher heads only, sparsity 0.5", dict(method="fisher", sparsity=0.5), False)
SCORING = {"kwon": ("gradients",), "fisher": ("gradients",), "output-fisher": ("output-gradients",),
           "sapx": ("output-gradients", "sapx")}  # which timed scoring passes a method needs when run alone


def context(task: str, model: str | None, calib_size: int, eval_size: int | None, seed: int = 0):
    """(task model, task data, split, calibration context) as `synprune prune` builds them."""
    from synprune.calibrate.context import Calibration
    from synprune.config import PruneConfig
    from synprune.evaluation.evaluate import task_metrics
    from synprune.model.load import as_task_model
    from synprune.calibrate.context import model_data
    from synprune.data.tasks import load_task, make_split

    if model is None:
        from synprune.train.finetune import cached_model_dir

        folder = cached_model_dir(task)
        if not (folder / "finetune.json").is_file():
            sys.exit(f"no finished task model for {task} in {folder}: run `synprune finetune --task {task}` first")
        model = str(folder)
    tm = as_task_model(None if model == "bundled" else model)
    data = model_data(tm, load_task(task))
    metrics = task_metrics(tm, data)
    cfg = PruneConfig(calib_size=calib_size, seed=seed, eval_size=eval_size)
    split = make_split(data, calib_size, seed, eval_size)
    return tm, data, split, Calibration(tm, split.calibration, cfg, metrics), cfg


def run_task(args) -> dict:
    from synprune.selection.budget import CostModel
    from synprune.run.prune import run

    tm, data, split, ctx, base = context(args.task, args.model, args.calib_size, args.eval_size, args.seed)
    cost = CostModel.from_model(tm.model)
    n = ctx.mean_length()
    rows, scoring = [], {}
    budgets = [float(b) for b in args.budgets.split(",")]
    wanted = None if args.recipes is None else set(args.recipes.split(","))
    unknown = (wanted or set()) - {r[0] for r in RECIPES} - {"heads-only"}
    if unknown:
        sys.exit(f"--recipes: unknown {', '.join(sorted(unknown))}; choose from {', '.join(r[0] for r in RECIPES)}, heads-only")
    plan = [(label, opts, free, b) for label, opts, free in RECIPES for b in budgets if wanted is None or label in wanted]
    if wanted is None or "heads-only" in wanted:
        plan.append((*HEADS_ONLY, None))
    for label, opts, free, budget in plan:
        cfg = base.replace(**opts, **({"budget": f"flops:{budget:g}"} if budget is not None else {}))
        before = dict(ctx.timings)
        t0 = time.perf_counter()
        res = run(ctx, cfg.validate(), data, split)
        wall = time.perf_counter() - t0
        spent = {k: v - before.get(k, 0.0) for k, v in ctx.timings.items()}
        method = opts["method"]
        # first computation of a scoring pass: remember what it cost
        if spent.get("gradients", 0) > 0:
            key = "output-gradients" if method in ("output-fisher", "sapx") else "gradients"
            scoring.setdefault(key, spent["gradients"])
        if method == "sapx" and "sapx" not in scoring:
            scoring["sapx"] = spent.get("score", 0.0) - spent.get("gradients", 0.0)
        search_repair = spent.get("select", 0.0) + spent.get("repair", 0.0)
        score_alone = sum(scoring.get(k, 0.0) for k in SCORING.get(method, ()))
        kept = cost.kept_fraction(res.pruned_heads, "flops", n, neurons=res.pruned_neurons)
        m = res.metric
        rows.append({"task": args.task, "model": tm.describe().get("name") or args.model, "recipe": label,
                     "label_free": free, "budget": budget, "flops_kept": round(kept, 4),
                     "heads_pruned": len(res.pruned_heads), "neurons_pruned": len(res.pruned_neurons),
                     "metric": m["name"], "dense": m["dense"], "pruned": m["pruned"],
                     "prune_seconds": round(score_alone + search_repair, 1),
                     "search_repair_seconds": round(search_repair, 1), "repair_seconds": round(spent.get("repair", 0.0), 1),
                     "wall_seconds": round(wall, 1)})
        r = rows[-1]
        print(f"{args.task} {label:<32} {budget!s:>5} flops kept {kept:.3f} {m['name']} {m['dense']:.2f} -> "
              f"{m['pruned']:.2f}  prune {r['prune_seconds']:.0f} s", flush=True)
    out = {"task": args.task, "model": args.model or "task model", "calib_size": args.calib_size,
           "eval_size": args.eval_size, "mean_length": n, "scoring_seconds": scoring, "rows": rows,
           "command": " ".join(sys.argv)}
    from synprune.io import atomic_write_json

    atomic_write_json(args.out, out)
    return out


def render(paths: list[Path]) -> str:
    """Per task: one row per recipe, the pruned metric at each FLOPs budget (change from dense in brackets),
    and the time to prune (scoring + search + repair, as if run alone) at each budget."""
    out = []
    for r in (json.loads(p.read_text()) for p in paths):
        rows = r["rows"]
        budgets = sorted({x["budget"] for x in rows if x["budget"] is not None}, reverse=True)
        first = rows[0]
        out += [f"**{r['task']}** ({r['model']}; {first['metric']}, dev, dense {first['dense']:.2f}; calibration "
                f"{r['calib_size']} train examples, mean length {r['mean_length']:.1f} tokens)", "",
                "| recipe | label-free | " + " | ".join(f"FLOPs {b:g}" for b in budgets) + " | prune s |",
                "|" + "---|" * (len(budgets) + 3)]
        recipes = list(dict.fromkeys(x["recipe"] for x in rows))
        for name in recipes:
            mine = {x["budget"]: x for x in rows if x["recipe"] == name}
            cells = []
            for b in budgets:
                x = mine.get(b)
                cells.append("-" if x is None else f"{x['pruned']:.2f} ({x['pruned'] - x['dense']:+.2f})")
            if None in mine:  # a heads-only row: its own FLOPs
                x = mine[None]
                cells = [f"{x['pruned']:.2f} ({x['pruned'] - x['dense']:+.2f}) at FLOPs {x['flops_kept']:.2f}"] + [""] * (len(budgets) - 1)
            times = "/".join(f"{x['prune_seconds']:.0f}" for x in mine.values())
            free = "yes" if next(iter(mine.values()))["label_free"] else ""
            out.append(f"| {name} | {free} | " + " | ".join(cells) + f" | {times} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task")
    p.add_argument("--model", default=None, help="model folder, or `bundled` (default: the cached task model)")
    p.add_argument("--budgets", default="0.6,0.5,0.4")
    p.add_argument("--calib-size", type=int, default=512)
    p.add_argument("--eval-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipes", default=None, help="comma-separated recipe labels (default: all), `heads-only` for that row")
    p.add_argument("--out", type=Path)
    p.add_argument("--render", type=Path, nargs="*")
    p.add_argument("--md", type=Path)
    args = p.parse_args()
    if args.render:
        text = render(args.render)
        print(text)
        if args.md:
            args.md.write_text(text)
        return
    if not args.task or not args.out:
        p.error("--task and --out (or --render FILES)")
    run_task(args)


if __name__ == "__main__":
    main()
