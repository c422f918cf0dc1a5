"""Peak memory of SAP's attention statistics for 512 against 4096 calibration sentences.

Each size runs in its own process on the bundled MiniLM over STS-B train sentences. The peak resident
set is reset after the model is loaded and the texts are parsed (Linux /proc/self/clear_refs), so the
figure is what the attention scans themselves add. Statistics are running sums, so it should not grow.

A batch's attention tensors grow with its longest input (B x L x H x T x T), so the smaller sample is a
subset of the larger one that keeps the larger one's longest pairs: both then see the same largest batch,
and any difference left is memory that grows with the number of sentences.

    python benchmarks/attention_memory.py [--sizes 512,4096] [--glue-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def child(n_sentences: int, largest: int, glue_dir: str | None) -> dict:
    import torch

    from synprune.calibrate.context import Calibration
    from synprune.config import PruneConfig
    from synprune.model.load import load_model
    from synprune.methods import score
    from synprune.progress import set_quiet
    from synprune.data.tasks import load_task, make_split

    torch.set_num_threads(2)
    set_quiet(True)
    tm = load_model()
    data = load_task("stsb", glue_dir)
    cfg = PruneConfig(calib_size=n_sentences // 2)  # embedding model: each pair gives two sentences
    pool = make_split(data, largest // 2, cfg.seed).calibration
    by_length = sorted(range(len(pool)), key=lambda i: -max(len(pool[i].text_a), len(pool[i].text_b or "")))
    longest, rest = by_length[:cfg.batch_size], by_length[cfg.batch_size:]
    random.Random(0).shuffle(rest)
    chosen = sorted(longest + rest[: max(0, cfg.calib_size - len(longest))])
    ctx = Calibration(tm, [pool[i] for i in chosen], cfg, ("spearman",))
    n_items = len(ctx.items)  # parses happen here
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    t0 = time.perf_counter()
    scores = score(ctx, cfg)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    return {"sentences": n_items, "rss_before_mb": before / 2**20, "peak_mb": peak / 2**20,
            "added_mb": (peak - before) / 2**20, "seconds": seconds, "n_arcs": scores.details["n_arcs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,4096")
    ap.add_argument("--glue-dir", default=None)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child is not None:
        print(json.dumps(child(args.child, max(sizes), args.glue_dir)))
        return
    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--sizes", args.sizes] + (["--glue-dir", args.glue_dir] if args.glue_dir else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print("| sentences | arcs | RSS before scans (MB) | peak during scans (MB) | added by scans (MB) | scan time (s) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sentences']} | {r['n_arcs']} | {r['rss_before_mb']:.0f} | {r['peak_mb']:.0f} | {r['added_mb']:.0f} | {r['seconds']:.1f} |")
    if len(rows) >= 2:
        print(f"peak added by scans, largest / smallest: {rows[-1]['added_mb'] / max(rows[0]['added_mb'], 1e-9):.2f}x "
              f"for {rows[-1]['sentences'] / rows[0]['sentences']:.0f}x the sentences")


if __name__ == "__main__":
    main()
