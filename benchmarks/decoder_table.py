"""The comparison table on a causal LM: perplexity on UD English EWT test at 0.25 and 0.5 of the query heads
removed, every method, random over 3 seeds, dense for scale, with and without Candidate Filtering.

Three sweeps share one loaded model and one evaluation sample (`--eval-size` seeded sentences of test):
  A. every method without CF, calibrated on `--calib-size` seeded sentences of dev;
  B. FLAP as published: `flap` with `--repair bias` (its bias compensation), same calibration as A;
  C. with and without CF for `--cf-methods`, on a smaller calibration sample (`--cf-calib-size`): CF scores
     every candidate by the calibration perplexity, one pass per candidate, which is what 2 CPU cores can afford.
Each sweep writes its own folder (results.csv, report.html, runs/*/result.json); the combined table goes to
OUT/table.md after every sweep, so a cut-short run still leaves what it finished.

    flock /tmp/synprune-heavy.lock python benchmarks/decoder_table.py --out runs/decoder_table --skip C
    flock /tmp/synprune-heavy.lock python benchmarks/decoder_table.py --out runs/decoder_table --skip A,B
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

METHODS = ("sap", "random", "magnitude", "entropy", "confidence", "fisher", "output-fisher", "flap", "attn-drop", "sapx")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--task", default="ewt")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--sparsities", default="0.25,0.5")
    p.add_argument("--calib-size", type=int, default=32)
    p.add_argument("--eval-size", type=int, default=100)
    p.add_argument("--cf-methods", default="sap,fisher,flap")
    p.add_argument("--cf-calib-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tolerance", type=float, default=0.85,
                   help="CF: a removal is kept while calibration perplexity stays within (2 - tolerance) x dense")
    p.add_argument("--skip", default="",
                   help="comma-separated sweeps not to run now (A, B, C); one already in OUT (results.csv) is read back")
    return p.parse_args(argv)


def render(parts: list[tuple[str, list[dict]]], args: argparse.Namespace, seconds: dict[str, float]) -> str:
    from synprune.data.metrics import best, direction_text

    rows = [r for _, rs in parts for r in rs]
    sparsities = sorted({float(r["sparsity"]) for r in rows})
    dense = float(rows[0]["dense"])
    metric = rows[0]["metric_name"]
    cells: dict[tuple[str, str], dict[float, list[float]]] = {}
    for name, rs in parts:
        for r in rs:
            label = r["method"] + ("+cf" if str(r["cf"]).lower() == "true" else "")
            cells.setdefault((name, label), {}).setdefault(float(r["sparsity"]), []).append(float(r["pruned"]))
    means = {k: {s: statistics.fmean(v) for s, v in by_s.items()} for k, by_s in cells.items()}
    top = {s: best(metric, [m[s] for m in means.values() if s in m]) for s in sparsities}
    head = ["method", "sweep (calibration sentences)"] + [f"{metric} at {s:g}" for s in sparsities] + \
        [f"x dense at {s:g}" for s in sparsities]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| dense | - | " + " | ".join(f"{dense:.2f}" for _ in sparsities) + " | " + " | ".join("1.00" for _ in sparsities) + " |"]
    for (name, label), by_s in cells.items():
        vals = []
        for s in sparsities:
            v = by_s.get(s)
            if not v:
                vals.append("-")
                continue
            text = f"{statistics.fmean(v):.2f}" + (f" ± {statistics.stdev(v):.2f} (n={len(v)})" if len(v) > 1 else "")
            vals.append(f"**{text}**" if statistics.fmean(v) == top[s] else text)
        ratios = [f"{means[(name, label)][s] / dense:.2f}" if s in means[(name, label)] else "-" for s in sparsities]
        lines.append(f"| {label} | {name} | " + " | ".join(vals) + " | " + " | ".join(ratios) + " |")
    n_eval = args.eval_size
    notes = [f"model {args.model}, task {args.task}: {metric} ({direction_text(metric)}) on {n_eval} seeded test "
             f"sentences (--eval-size {n_eval}, seed 0); bold: best pruned model per column",
             f"sweeps: A = every method, calibration {args.calib_size} seeded dev sentences; B = flap with --repair bias "
             f"(FLAP's bias compensation), same calibration; C = {args.cf_methods} with and without CF, calibration "
             f"{args.cf_calib_size} dev sentences (CF's candidates are checked on the calibration perplexity; "
             f"--tolerance {args.tolerance}: a removal stays while it is within {2 - args.tolerance:.2f} x dense)",
             "seconds this invocation spent per sweep (finished runs in OUT are read back, not recomputed): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())]
    return "\n".join(["# Query-head pruning of a causal LM", "", *lines, "", *[f"- {n}" for n in notes]]) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from synprune.io import atomic_write_text
    from synprune.model.load import load_model
    from synprune.run.sweep import sweep

    if not set("ABC") - set(args.skip.split(",")):
        raise SystemExit("--skip A,B,C leaves nothing to run")
    tm = load_model(args.model)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    common = dict(task=args.task, sparsities=sparsities, eval_size=args.eval_size)
    cf_methods = [m for m in args.cf_methods.split(",") if m]
    plan = [
        ("A", dict(methods=args.methods.split(","), seeds=[0, 1, 2], calib_size=args.calib_size)),
        ("B", dict(methods=["flap"], seeds=[0], calib_size=args.calib_size, repair="bias")),
        ("C", dict(methods=[m + s for m in cf_methods for s in ("", "+cf")], seeds=[0], calib_size=args.cf_calib_size,
                   tolerance=args.tolerance)),
    ]
    parts, seconds = [], {}
    skip = set(args.skip.split(","))
    for name, options in plan:
        label = f"{name} ({options['calib_size']})" + (" repair bias" if options.get("repair") else "")
        done = args.out / f"sweep_{name}" / "results.csv"
        if name in skip:
            if done.is_file():
                with open(done, newline="") as f:
                    parts.append((label, list(csv.DictReader(f))))
            continue
        t0 = time.perf_counter()
        res = sweep(tm, None, out=args.out / f"sweep_{name}", **common, **options)
        seconds[name] = time.perf_counter() - t0
        parts.append((label, res.rows))
        atomic_write_text(args.out / "table.md", render(parts, args, seconds))  # what is done so far
    text = render(parts, args, seconds)  # with the sweeps read back after the last one run
    atomic_write_text(args.out / "table.md", text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
