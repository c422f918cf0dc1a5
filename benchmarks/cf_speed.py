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
        strip = lambda log: [{k: v for k, v in e.items() if k not in ("metric", "floor", "dense")} for e in log]
        diffs = [abs(a["metric"] - b["metric"]) for a, b in zip(log_f, log_p)
                 if a["metric"] is not None and b["metric"] is not None]
        same = (sel_f == sel_p and strip(log_f) == strip(log_p) and len(log_f) == len(log_p)
                and all((a["metric"] is None) == (b["metric"] is None) for a, b in zip(log_f, log_p))
                and max(diffs, default=0.0) <= 1e-6)
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


if __name__ == "__main__":
    main()
