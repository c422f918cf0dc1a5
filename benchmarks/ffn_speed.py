"""Latency of models pruned with heads and feed-forward neurons (`kwon` at FLOPs budgets), exported with
`export_pruned` (repair folded in) and loaded back with `load_pruned`, against dense and a heads-only pruning,
side by side in one run; and against the FLOPs prediction at the benchmark's sequence length.

    python benchmarks/ffn_speed.py --out benchmarks/results/ffn_speed.md

Timing as in benchmarks/speedup.py (its `time_all`): every model once per round, rounds interleaved in a
shuffled order, medians reported; random token ids, no padding, float32, CPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speedup import Variant, time_all  # noqa: E402  (benchmarks/ is not a package)


def build(args, workdir: Path) -> list[Variant]:
    from ffn_table import context
    from synprune.selection.budget import CostModel
    from synprune.export.checkpoint import export_pruned
    from synprune.model.pruned import load_pruned
    from synprune.run.prune import run

    tm, data, split, ctx, base = context(args.task, args.model, args.calib_size, 32)
    cost = CostModel.from_model(tm.model)
    n_dense = sum(p.numel() for p in tm.model.parameters())
    out = [Variant("dense", 0.0, tm.model, [], n_dense, 0, tm.n_heads, [], 1.0)]
    plan = [("heads only (fisher, sparsity 0.5)", dict(method="fisher", sparsity=0.5))]
    plan += [(f"kwon flops:{b:g}", dict(method="kwon", budget=f"flops:{b:g}")) for b in map(float, args.budgets.split(","))]
    for name, opts in plan:
        res = run(ctx, base.replace(**opts).validate(), data, split)
        folder = export_pruned(tm.model, tm.tokenizer, res.pruned_heads, workdir / name.replace(" ", "_").replace(":", "-"),
                               neurons=res.pruned_neurons, repair=res.repair)
        model, _ = load_pruned(folder)
        kept = cost.kept_fraction(res.pruned_heads, "flops", args.seq, neurons=res.pruned_neurons)
        v = Variant(name, kept, model, res.pruned_heads, sum(p.numel() for p in model.parameters()),
                    (folder / "model.safetensors").stat().st_size, tm.n_heads - len(res.pruned_heads),
                    res.removed_layers, 1.0 / kept)
        v.neurons_kept = res.n_neurons - len(res.pruned_neurons) if res.n_neurons else None
        v.task_kept = cost.kept_fraction(res.pruned_heads, "flops", ctx.mean_length(), neurons=res.pruned_neurons)
        out.append(v)
        print(f"built {name}: FLOPs kept {v.task_kept:.3f} at the task's mean length, {kept:.3f} at {args.seq}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--task", default="stsb")
    p.add_argument("--model", default="bundled", help="model folder, `bundled`, or omit for the cached task model")
    p.add_argument("--budgets", default="0.6,0.5,0.4")
    p.add_argument("--calib-size", type=int, default=256)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--rounds", default="40,8")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=150.0)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    args.model = None if args.model == "task" else args.model
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from synprune.io import atomic_write_text

    batches = [int(b) for b in args.batches.split(",")]
    max_rounds = [int(r) for r in args.rounds.split(",")]
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        variants = build(args, Path(tmp))
        rounds = {b: time_all(variants, b, args, r, args.seconds / len(batches)) for b, r in zip(batches, max_rounds)}
    dense = variants[0]
    med = {(v.name, b): statistics.median(v.times[b]) for v in variants for b in batches}
    header = ["model", "heads kept", "neurons kept", "parameters", "FLOPs kept (task length / seq)"]
    for b in batches:
        header += [f"b{b} ms", f"b{b} speedup"]
    header += ["predicted (FLOPs)"] + [f"b{b} measured/predicted" for b in batches]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    verdict = []
    for v in variants:
        nk = getattr(v, "neurons_kept", None)
        tk = getattr(v, "task_kept", None)
        row = [v.name, str(v.heads_kept), "all" if nk is None else str(nk), f"{v.params:,} ({100 * v.params / dense.params:.1f}%)",
               "1 / 1" if v is dense else f"{tk:.3f} / {v.sparsity:.3f}"]
        for b in batches:
            row += [f"{1e3 * med[(v.name, b)]:.1f}", f"{med[(dense.name, b)] / med[(v.name, b)]:.2f}x"]
        row += [f"{v.predicted:.2f}x"] + [f"{100 * med[(dense.name, b)] / med[(v.name, b)] / v.predicted:.0f}%" for b in batches]
        lines.append("| " + " | ".join(row) + " |")
        if v.name == "kwon flops:0.5" and 32 in batches:
            s = med[(dense.name, 32)] / med[(v.name, 32)]
            verdict.append(f"target (kwon flops:0.5 at least 1.5x faster than dense at batch 32): "
                           f"{'MET' if s >= 1.5 else 'NOT MET'} ({s:.2f}x)")
    notes = [f"task {args.task}, model {args.model or 'cached task model'}, calibration {args.calib_size} examples; "
             f"float32, sequence {args.seq}, no padding, torch.set_num_threads({args.threads}), torch {torch.__version__}",
             "masks searched at the task's mean length (FLOPs kept: first figure); the prediction is dense / pruned "
             f"attention + feed-forward MACs at sequence {args.seq} (second figure), synprune.selection.budget",
             "rounds: " + ", ".join(f"batch {b}: {r}" for b, r in rounds.items()) + "; medians",
             f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; total {time.perf_counter() - t0:.0f} s",
             "command: python " + " ".join(sys.argv)]
    text = "\n".join(["# Latency of heads + neurons pruned models (exported, repair folded)", "", *lines, "",
                      *[f"- {n}" for n in notes + verdict]]) + "\n"
    print(text)
    atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
