"""Candidate Filtering time: layer-skipping ablations (fast) against a full forward pass per ablation (plain).

Bundled all-MiniLM-L6-v2 on STS-B: a method's order (SAP by default) on a seeded 512-example sample of train,
then CF at the given sparsity with the default pool, once each way, in one process, on the same calibration
batches. Prints wall and CPU times (CPU time is steadier on a shared machine) and their ratios, the layers
each way ran (a load-independent count), the candidates per layer (a candidate in layer l re-runs layers
l..L-1 only, so early candidates gain little), and whether both ways made the same decisions (same
selection, same log, metrics equal to float tolerance).

    python benchmarks/cf_speed.py [--calib-size 512] [--method sap] [--sparsity 0.5] [--out FILE]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--glue-dir", default=None)
    p.add_argument("--method", default="sap", help="method whose order feeds CF")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--calib-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    p.add_argument("--tolerance", type=float, default=0.95)
    p.add_argument("--out", type=Path, default=None, help="append the result as a markdown table row here")
    return p.parse_args(argv)


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
    from synprune.select import n_to_prune
    from synprune.tasks import load_task, make_split

    torch.set_num_threads(args.threads)
    tm = load_model(args.model)
    data = load_task("stsb", args.glue_dir)
    cfg = PruneConfig(method=args.method, sparsity=args.sparsity, calib_size=args.calib_size,
                      batch_size=args.batch_size, tolerance=args.tolerance, cf=True).validate()
    ctx = Calibration(tm, make_split(data, cfg.calib_size, cfg.seed).calibration, cfg, task_metrics(tm, data))
    order = score(ctx, cfg).order
    n = n_to_prune(cfg.sparsity, tm.n_heads)
    ctx.prepared  # tokenize before timing

    scorers = []

    class Counting(cf.AblationScorer):  # keeps each scorer to read its pass and layer counts afterwards
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            scorers.append(self)

    cf.AblationScorer = Counting
    runs = {}
    for fast in (True, False):
        t0, c0 = time.perf_counter(), time.process_time()
        selection, log = cf.candidate_filter(ctx, order, n, cfg, fast=fast)
        runs[fast] = (time.perf_counter() - t0, time.process_time() - c0, selection, log, scorers[-1])

    (t_fast, c_fast, sel_f, log_f, sc_f), (t_plain, c_plain, sel_p, log_p, sc_p) = runs[True], runs[False]
    strip = lambda log: [{k: v for k, v in e.items() if k not in ("metric", "floor", "dense")} for e in log]
    diffs = [abs(a["metric"] - b["metric"]) for a, b in zip(log_f, log_p)
             if a["metric"] is not None and b["metric"] is not None]
    same = (sel_f == sel_p and strip(log_f) == strip(log_p) and len(log_f) == len(log_p)
            and all((a["metric"] is None) == (b["metric"] is None) for a, b in zip(log_f, log_p))
            and max(diffs, default=0.0) <= 1e-6)
    summary = cf.summarize(log_f)
    print(f"model {tm.name}, STS-B calibration {len(ctx.examples)} examples, batch {cfg.batch_size}, "
          f"{args.threads} thread(s), order: {cfg.method}, sparsity {cfg.sparsity} ({n} heads), "
          f"pool {summary['pool']}, walk tried {summary['tried']} (removed {summary['removed']}), fill {summary['fill']}")
    pool_layers = [sum(1 for e in log_f if e["stage"] == "single" and e["layer"] == l) for l in range(tm.grid[0])]
    print(f"candidates per layer: {pool_layers}")
    print(f"fast  {t_fast:8.1f} s wall, {c_fast:8.1f} s CPU  ({sc_f.passes} passes, {sc_f.layer_runs} layer runs)")
    print(f"plain {t_plain:8.1f} s wall, {c_plain:8.1f} s CPU  ({sc_p.passes} passes, {sc_p.layer_runs} layer runs)")
    print(f"speedup {t_plain / t_fast:.2f}x wall, {c_plain / c_fast:.2f}x CPU (layer runs {sc_p.layer_runs / sc_f.layer_runs:.2f}x); "
          f"same decisions: {same} (max metric difference {max(diffs, default=0.0):.2e})")
    if args.out:
        header = ("| model | calib | order | sparsity | pool | tried | fast s | plain s | wall speedup | layer-run ratio "
                  "| CPU speedup | same decisions | max metric diff |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
        row = (f"| {tm.name} | {len(ctx.examples)} | {cfg.method} | {cfg.sparsity} | {summary['pool']} | "
               f"{summary['tried']} | {t_fast:.1f} | {t_plain:.1f} | {t_plain / t_fast:.2f}x | "
               f"{sc_p.layer_runs / sc_f.layer_runs:.2f}x | {c_plain / c_fast:.2f}x | {same} | {max(diffs, default=0.0):.1e} |\n")
        old = args.out.read_text() if args.out.exists() else header
        atomic_write_text(args.out, old + row)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
