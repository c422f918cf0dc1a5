"""Candidate Filtering time: synprune's CF (fast) against the naive CF (a full forward pass for every ablation
and every walk step, nothing reused), side by side in one process, on the same calibration batches.

For each sparsity a fresh calibration context is built (nothing carried over from another sparsity, as in a
single `synprune prune --cf`), the method's order is computed, and CF runs once each way. Prints wall and CPU
times (CPU time is steadier on a shared machine) and their ratios, the passes and layer runs each way made
(load-independent counts), and whether both ways made the same decisions (same selection, same log,
metrics equal to float tolerance). What the fast path does: it re-runs only the layers from an ablation's
layer up, on cached hidden states of the accepted removals, and never scores a removed set twice (a walk
step whose earlier steps were all put back is the head's single score).

    python benchmarks/cf_speed.py [--task stsb] [--model DIR] [--sparsities 0.5,0.75] [--calib-size 512] [--out FILE]
    python benchmarks/cf_speed.py --sweep sap,fisher --sparsities 0.25,0.5,0.75 --calib-size 48

`--sweep METHODS` times the CF runs of a sweep instead (each method x sparsity, as `synprune sweep --methods
sap+cf,fisher+cf` makes them, one after the other in one process on one calibration context): naive, each
run on its own; fast, as the sweep does (heads scored alone once for every run, walks sharing what another
run already scored); same decisions for every run.

`--task sst2` without `--model` uses the cached SST-2 task model (`synprune finetune --task sst2` builds it).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="stsb")
    p.add_argument("--model", default=None, help="model folder (default: bundled MiniLM for stsb, else the cached task model)")
    p.add_argument("--glue-dir", default=None)
    p.add_argument("--method", default="sap", help="method whose order feeds CF")
    p.add_argument("--sparsities", default="0.5,0.75")
    p.add_argument("--calib-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    p.add_argument("--tolerance", type=float, default=0.95)
    p.add_argument("--out", type=Path, default=None, help="append one markdown table row per sparsity here")
    p.add_argument("--sweep", default=None, help="comma-separated methods: time all their CF runs together")
    return p.parse_args(argv)


HEADER = ("| model | task | calib | order | sparsity | pool | tried | naive passes | fast passes | naive s | fast s "
          "| wall speedup | CPU speedup | layer-run ratio | same decisions | max metric diff |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def _model(args):
    from synprune.errors import SynpruneError
    from synprune.finetune import RECORD_FILE, cached_model_dir

    if args.model or args.task == "stsb":
        return args.model
    folder = cached_model_dir(args.task, glue_dir=args.glue_dir)
    if not (folder / RECORD_FILE).is_file():
        raise SynpruneError(f"no cached {args.task} task model; build it with `synprune finetune --task {args.task}`")
    return str(folder)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from synprune import cf
    from synprune.calibration import Calibration
    from synprune.config import PruneConfig
    from synprune.evaluate import task_metrics
    from synprune.io import atomic_write_text
    from synprune.models import load_model
    from synprune.pipeline import score
    from synprune.progress import set_quiet
    from synprune.select import n_to_prune
    from synprune.tasks import load_task, make_split

    torch.set_num_threads(args.threads)
    set_quiet(True)
    tm = load_model(_model(args))
    data = load_task(args.task, args.glue_dir)
    scorers = []

    class Counting(cf.AblationScorer):  # keeps each scorer to read its pass and layer counts afterwards
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            scorers.append(self)

    cf.AblationScorer = Counting
    if args.sweep:
        return _sweep(args, tm, data, scorers)
    for sparsity in [float(s) for s in args.sparsities.split(",")]:
        cfg = PruneConfig(method=args.method, sparsity=sparsity, calib_size=args.calib_size,
                          batch_size=args.batch_size, tolerance=args.tolerance, cf=True).validate()
        ctx = Calibration(tm, make_split(data, cfg.calib_size, cfg.seed).calibration, cfg, task_metrics(tm, data))
        order = score(ctx, cfg).order
        n = n_to_prune(cfg.sparsity, tm.n_heads)
        ctx.prepared  # tokenize before timing
        runs = {}
        for fast in (False, True):
            t0, c0 = time.perf_counter(), time.process_time()
            selection, log = cf.candidate_filter(ctx, order, n, cfg, fast=fast)
            runs[fast] = (time.perf_counter() - t0, time.process_time() - c0, selection, log, scorers[-1])
        (t_fast, c_fast, sel_f, log_f, sc_f), (t_plain, c_plain, sel_p, log_p, sc_p) = runs[True], runs[False]
        same, diffs = _same(sel_f, log_f, sel_p, log_p)
        summary = cf.summarize(log_f)
        pool_layers = [sum(1 for e in log_f if e["stage"] == "single" and e["layer"] == l) for l in range(tm.grid[0])]
        print(f"model {tm.name}, {data.name} calibration {len(ctx.examples)} examples, batch {cfg.batch_size}, "
              f"{args.threads} thread(s), order: {cfg.method}, sparsity {cfg.sparsity} ({n} heads), "
              f"pool {summary['pool']} (per layer {pool_layers}), walk tried {summary['tried']} "
              f"(removed {summary['removed']}), fill {summary['fill']}")
        print(f"  naive {t_plain:8.1f} s wall, {c_plain:8.1f} s CPU  ({sc_p.passes} passes, {sc_p.layer_runs} layer runs)")
        print(f"  fast  {t_fast:8.1f} s wall, {c_fast:8.1f} s CPU  ({sc_f.passes} passes, {sc_f.layer_runs} layer runs)")
        print(f"  speedup {t_plain / t_fast:.2f}x wall, {c_plain / c_fast:.2f}x CPU (layer runs "
              f"{sc_p.layer_runs / sc_f.layer_runs:.2f}x); same decisions: {same} (max metric difference "
              f"{max(diffs, default=0.0):.2e})", flush=True)
        if args.out:
            row = (f"| {tm.name} | {data.name} | {len(ctx.examples)} | {cfg.method} | {cfg.sparsity} | {summary['pool']} | "
                   f"{summary['tried']} | {sc_p.passes} | {sc_f.passes} | {t_plain:.1f} | {t_fast:.1f} | "
                   f"{t_plain / t_fast:.2f}x | {c_plain / c_fast:.2f}x | {sc_p.layer_runs / sc_f.layer_runs:.2f}x | "
                   f"{same} | {max(diffs, default=0.0):.1e} |\n")
            old = args.out.read_text() if args.out.exists() else HEADER
            atomic_write_text(args.out, old + row)


def _same(sel_f, log_f, sel_p, log_p) -> tuple[bool, list[float]]:
    """Whether two CF runs made the same decisions (selection, log, metrics to 1e-6), and their metric differences."""
    strip = lambda log: [{k: v for k, v in e.items() if k not in ("metric", "floor", "dense")} for e in log]
    diffs = [abs(a["metric"] - b["metric"]) for a, b in zip(log_f, log_p) if a["metric"] is not None and b["metric"] is not None]
    same = (sel_f == sel_p and strip(log_f) == strip(log_p) and len(log_f) == len(log_p)
            and all((a["metric"] is None) == (b["metric"] is None) for a, b in zip(log_f, log_p))
            and max(diffs, default=0.0) <= 1e-6)
    return same, diffs


def _sweep(args, tm, data, scorers) -> None:
    """Every CF run of `--sweep` methods x `--sparsities`, naive (each alone) then fast (sharing, as a sweep)."""
    from synprune import cf
    from synprune.calibration import Calibration
    from synprune.config import PruneConfig
    from synprune.evaluate import task_metrics
    from synprune.io import atomic_write_text
    from synprune.pipeline import score
    from synprune.select import n_to_prune
    from synprune.tasks import make_split

    methods, sparsities = args.sweep.split(","), [float(s) for s in args.sparsities.split(",")]
    base = PruneConfig(calib_size=args.calib_size, batch_size=args.batch_size, tolerance=args.tolerance, cf=True).validate()
    metrics = task_metrics(tm, data)
    examples = make_split(data, base.calib_size, base.seed).calibration
    scoring = Calibration(tm, examples, base, metrics)  # the orders (not timed)
    runs = [(m, s, base.replace(method=m, sparsity=s).validate()) for m in methods for s in sparsities]
    orders = {(m, s): score(scoring, c).order for m, s, c in runs}
    out = {}
    for fast in (False, True):
        ctx = Calibration(tm, examples, base, metrics)  # fresh: nothing scored yet
        ctx.prepared  # tokenize before timing
        first = len(scorers)
        t0, c0 = time.perf_counter(), time.process_time()
        chosen = {(m, s): cf.candidate_filter(ctx, orders[(m, s)], n_to_prune(s, tm.n_heads), c, fast=fast) for m, s, c in runs}
        out[fast] = (time.perf_counter() - t0, time.process_time() - c0, chosen, scorers[first:])
    (t_p, c_p, naive, sc_p), (t_f, c_f, fast, sc_f) = out[False], out[True]
    checks = [_same(*fast[k], *naive[k]) for k in naive]
    same = all(ok for ok, _ in checks)
    diff = max((max(d, default=0.0) for _, d in checks), default=0.0)
    passes = lambda sc: (sum(x.passes for x in sc), sum(x.layer_runs for x in sc))
    (pp, lp), (pf, lf) = passes(sc_p), passes(sc_f)
    line = (f"model {tm.name}, {data.name} calibration {len(examples)} examples, batch {base.batch_size}, {args.threads} "
            f"thread(s); the CF runs of a sweep: {', '.join(m + '+cf' for m in methods)} at {args.sparsities} ({len(runs)} runs)\n"
            f"  naive {t_p:8.1f} s wall, {c_p:8.1f} s CPU  ({pp} passes, {lp} layer runs)\n"
            f"  fast  {t_f:8.1f} s wall, {c_f:8.1f} s CPU  ({pf} passes, {lf} layer runs)\n"
            f"  speedup {t_p / t_f:.2f}x wall, {c_p / c_f:.2f}x CPU (layer runs {lp / lf:.2f}x); same decisions in every run: "
            f"{same} (max metric difference {diff:.2e})")
    print(line, flush=True)
    if args.out:
        old = args.out.read_text() if args.out.exists() else ""
        atomic_write_text(args.out, old + line + "\n")


if __name__ == "__main__":
    main()
