"""Attention-statistics throughput against a plain eager forward pass over the same batches.

Bundled all-MiniLM-L6-v2 on a seeded STS-B calibration sample (each pair gives two sentences). For each
scan the default sweep ran (SAP's threshold and penalties, entropy/confidence, sapx's arc table), and for
the one scan it now makes of all but the penalties (last row), this times `attention.scan` with those
collectors, and, in the same process and alternating with it, the model
alone in eager attention over exactly the batches the scan feeds it (same tokenization, order and padding;
no attention maps requested). Prints each time, sentences per second and the ratio scan / plain
(1.0 = the statistics cost nothing beyond the forward pass). Best of `--repeats` runs of each.

    python benchmarks/attention_speed.py [--calib-size 512] [--threads 1] [--repeats 3] [--out FILE]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--glue-dir", default=None)
    p.add_argument("--calib-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="write the table (markdown) here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from synprune.calibrate import attention as A
    from synprune.calibrate.context import Calibration
    from synprune.config import PruneConfig
    from synprune.io import atomic_write_text
    from synprune.calibrate.summary import AttentionStats, MeanAttention
    from synprune.methods.sap import Penalty
    from synprune.methods.sapx import ArcTable
    from synprune.model.load import load_model
    from synprune.progress import set_quiet
    from synprune.data.tasks import load_task, make_split

    torch.set_num_threads(args.threads)
    set_quiet(True)
    tm = load_model()
    cfg = PruneConfig(calib_size=args.calib_size)
    ctx = Calibration(tm, make_split(load_task("stsb", args.glue_dir), cfg.calib_size, cfg.seed).calibration, cfg)
    items = ctx.items  # parses happen here, before any timing
    grid = tm.grid
    ranking = ctx.dependency_ranking(cfg.k, False)
    tau = ctx.threshold(cfg.threshold)
    labels = ctx.dependency_ranking(1, keep_punct=True).labels
    scans = {
        "SAP threshold (MeanAttention)": (lambda: [MeanAttention(grid)], False),
        "SAP penalties (Penalty)": (lambda: [Penalty(tau, ranking, cfg.direction)], False),
        "entropy/confidence (AttentionStats)": (lambda: [AttentionStats(grid)], False),
        "sapx arc table (ArcTable)": (lambda: [ArcTable(grid, labels)], True),
        "the sweep's shared scan (MeanAttention + AttentionStats + ArcTable)":
            (lambda: [MeanAttention(grid), AttentionStats(grid), ArcTable(grid, labels)], True),
    }
    batches = A.scan_batches(tm, items, cfg.batch_size, cfg.max_length)

    @torch.no_grad()
    def plain() -> None:
        with A.eager_attention(tm.model):
            for b in batches:
                tm.model(**b.model_inputs("cpu"))

    rows = []
    for name, (make, keep_punct) in scans.items():
        index = ctx.dependency_ranking(1, keep_punct).index
        t_scan, t_plain = [], []
        for _ in range(args.repeats):  # alternate, so both see the same machine load
            t_plain.append(_once(plain))
            t_scan.append(_once(lambda: A.scan(tm, items, make(), index, keep_punct, cfg.batch_size, cfg.max_length,
                                               name, batches)))
        rows.append((name, min(t_plain), min(t_scan)))
    n = len(items)
    lines = [f"model {tm.name}, STS-B calibration {len(ctx.examples)} pairs = {n} sentences, batch {cfg.batch_size}, "
             f"{args.threads} thread(s), best of {args.repeats}",
             "", "| scan | plain eager forward (s) | scan (s) | scan sentences/s | throughput scan / plain |",
             "|---|---:|---:|---:|---:|"]
    for name, tp, ts in rows:
        lines.append(f"| {name} | {tp:.2f} | {ts:.2f} | {n / ts:.0f} | {tp / ts:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
