"""Exported pruned causal LMs against the dense model, side by side in one run (float32, CPU by default).

For each variant: parameters, KV-cache bytes after a prefill of batch x length tokens, prefill tokens/s
(batch 8 x 256 tokens by default), greedy decode tokens/s (batch 1, after a short prompt), and the FLOPs
prediction (synprune.selection.budget's attention + feed-forward MACs at the prefill length; also the whole model's,
LM head included, which pruning does not shrink). Pruned variants come from `--results` (result.json files of
`synprune prune`/`sweep` runs on this model) or, by default, from the data-free `magnitude` order: 0.25 and 0.5
of the query heads, and 0.5 counted in whole key/value groups (`--units kv-groups`, which also shrinks the
KV cache). Every pruned model goes through `export_pruned` (checked against the masked model) and is loaded
back with `load_pruned`: what is timed is the exported model. Models run interleaved (each round runs every
model once, in a shuffled order); medians are reported.

    flock /tmp/synprune-heavy.lock python benchmarks/decoder_speed.py --out benchmarks/results/decoder_speed.md
"""
from __future__ import annotations

import argparse
import json
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
    model: torch.nn.Module
    pruned: list[tuple[int, int]]
    params: int
    kv_bytes: int = 0
    predicted: float = 1.0  # attention + FFN FLOPs speedup
    predicted_all: float = 1.0  # whole model, LM head included
    times: dict[str, list[float]] = field(default_factory=dict)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="write the table as markdown here")
    p.add_argument("--model", default="smollm2", help="causal LM: smollm2 (default), a .gguf file or a folder")
    p.add_argument("--results", default="", help="comma-separated result.json files whose pruned heads to time")
    p.add_argument("--exports", default="", help="comma-separated folders written by `synprune prune --export` (any "
                   "units, any repair: e.g. recon's re-fitted weights, which result.json does not hold), timed as loaded")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens before greedy decoding (batch 1)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def magnitude_variants(tm) -> list[tuple[str, list[tuple[int, int]]]]:
    from synprune.arch import group_size
    from synprune.methods import order_by
    from synprune.methods.magnitude import out_proj_norms
    from synprune.selection.select import group_order, n_to_prune, select

    grid = tm.grid
    order = order_by(out_proj_norms(tm.model, grid), highest_first=False)
    gs = group_size(tm.model)
    out = [(f"magnitude, {s:g} of query heads", select(order, grid, n_to_prune(s, tm.n_heads)).pruned) for s in (0.25, 0.5)]
    n = gs * n_to_prune(0.5, tm.n_heads // gs)
    out.append(("magnitude, 0.5 in KV groups", select(group_order(order, gs), grid, n).pruned))
    return out


def result_variants(paths: str) -> list[tuple[str, list[tuple[int, int]]]]:
    out = []
    for path in (p for p in paths.split(",") if p.strip()):
        r = json.loads(Path(path).read_text())
        label = r["method"] + ("+cf" if r.get("cf") else "")
        out.append((f"{label}, {len(r['pruned_heads'])} heads", [tuple(h) for h in r["pruned_heads"]]))
    return out


def export_units(model: torch.nn.Module, n_heads: int, n_neurons: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The query heads and neurons a loaded pruned model lacks against the dense grid, by their original indices
    where the model records them (synprune's exports): which heads matter, since a key/value group goes only
    with all of its query heads. A checkpoint that does not record them (another tool's) counts as having lost
    its last units."""
    from synprune.arch import attention_handles, ffn_handles

    def gone(layer, kept, n):
        kept = set(kept)
        return [(layer, u) for u in range(n) if u not in kept]

    heads = [u for a in attention_handles(model) for u in gone(a.layer, a.kept_heads, n_heads)]
    neurons = [u for f in ffn_handles(model) for u in gone(f.layer, f.kept, n_neurons)]
    return heads, neurons


def load_export(folder: Path, attn: str) -> torch.nn.Module:
    """A folder synprune exported, or a peer tool's model as decoder_peers.py saved it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from decoder_peers import load_cell_model

    return load_cell_model({"folder": str(folder)}, attn)


def cache_bytes(cache) -> int:
    """Bytes of every tensor a transformers cache object holds."""
    seen, total = set(), 0
    for layer in getattr(cache, "layers", []):
        for t in vars(layer).values():
            if torch.is_tensor(t) and id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def lm_head_macs(model: torch.nn.Module) -> int:
    head = model.get_output_embeddings()
    return int(head.weight.numel()) if head is not None else 0


def build(args: argparse.Namespace, workdir: Path) -> list[Variant]:
    from synprune.selection.budget import CostModel
    from synprune.export.checkpoint import export_pruned
    from synprune.model.pruned import load_pruned
    from synprune.model.load import load_model

    tm = load_model(args.model)
    dense = tm.model
    cost = CostModel.from_model(dense)
    total = cost.total("flops", args.seq)
    head = args.seq * lm_head_macs(dense)
    n_params = sum(p.numel() for p in dense.parameters())
    out = [Variant("dense as loaded", dense, [], n_params)]
    # every timed model, dense included, goes through the same export and reload, so that only the pruning differs
    exports = [Path(f) for f in args.exports.split(",") if f.strip()]
    chosen = [("dense", [])] + (result_variants(args.results) if args.results or exports else magnitude_variants(tm))
    for name, pruned in chosen + [(str(f), None) for f in exports]:
        neurons = []
        if pruned is None:  # an export made elsewhere (synprune's or another tool's folder): timed as written
            folder = Path(name)
            model = load_export(folder, dense.config._attn_implementation)
            pruned, neurons = export_units(model, tm.grid[1], cost.intermediate)
            name = f"{folder.name} ({len(pruned)} heads, {len(neurons)} neurons)"
        else:
            folder = export_pruned(dense, tm.tokenizer, pruned, workdir / f"v{len(out)}")
            model, _ = load_pruned(folder, attn_implementation=dense.config._attn_implementation)
        saved = cost.saved(pruned, "flops", args.seq, neurons=neurons)
        out.append(Variant(name, model, pruned, sum(p.numel() for p in model.parameters()),
                           predicted=total / (total - saved), predicted_all=(total + head) / (total + head - saved)))
    return out


@torch.inference_mode()
def measure(variants: list[Variant], args: argparse.Namespace) -> None:
    g = torch.Generator().manual_seed(1234)
    vocab = variants[0].model.config.vocab_size
    ids = torch.randint(1000, vocab, (args.batch, args.seq), generator=g)
    prompt = torch.randint(1000, vocab, (1, args.prompt), generator=g)
    mask = torch.ones_like(ids)

    def prefill(v: Variant) -> float:
        t0 = time.perf_counter()
        out = v.model(input_ids=ids, attention_mask=mask, use_cache=True)
        dt = time.perf_counter() - t0
        v.kv_bytes = cache_bytes(out.cache if getattr(out, "cache", None) is not None else out.past_key_values)
        return dt

    def generate(v: Variant, n: int) -> float:
        t0 = time.perf_counter()
        v.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0

    for v in variants:  # warm-up
        prefill(v)
        generate(v, 2)
    order = list(range(len(variants)))
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for i in order:
            v = variants[i]
            v.times.setdefault("prefill", []).append(prefill(v))
            # decode rate from the difference of two generations, so prompt processing cancels out
            v.times.setdefault("decode", []).append(generate(v, args.new_tokens + 1) - generate(v, 1))


def render(variants: list[Variant], args: argparse.Namespace) -> tuple[list[str], list[list[str]]]:
    dense = next(v for v in variants if v.name == "dense")  # the exported-and-reloaded dense model
    med = {(v.name, k): statistics.median(v.times[k]) for v in variants for k in ("prefill", "decode")}
    header = ["model", "query heads kept", "KV groups kept", "parameters", "KV cache MB", "prefill tok/s", "prefill speedup",
              "decode tok/s", "decode speedup", "predicted (attn+FFN FLOPs)", "predicted (whole model)"]
    rows = []
    cfg = dense.model.config
    grid = cfg.num_hidden_layers, cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or grid[1]
    gs = grid[1] // n_kv
    for v in variants:
        pruned = set(v.pruned)
        groups_gone = sum(1 for l in range(grid[0]) for g in range(n_kv)
                          if all((l, g * gs + j) in pruned for j in range(gs)))
        pre = args.batch * args.seq / med[(v.name, "prefill")]
        dec = args.new_tokens / med[(v.name, "decode")]
        rows.append([v.name, f"{grid[0] * grid[1] - len(pruned)}", f"{grid[0] * n_kv - groups_gone}",
                     f"{v.params:,} ({100 * v.params / dense.params:.1f}%)", f"{v.kv_bytes / 1e6:.1f}", f"{pre:.0f}",
                     f"{med[(dense.name, 'prefill')] / med[(v.name, 'prefill')]:.2f}x", f"{dec:.1f}",
                     f"{med[(dense.name, 'decode')] / med[(v.name, 'decode')]:.2f}x", f"{v.predicted:.2f}x",
                     f"{v.predicted_all:.2f}x"])
    return header, rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from synprune.io import atomic_write_text

    t_start, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        variants = build(args, Path(tmp))
        t_built = time.perf_counter()
        measure(variants, args)
    header, rows = render(variants, args)
    notes = [
        f"model {args.model} ({type(variants[0].model).__name__}), float32, CPU, torch.set_num_threads({args.threads}), "
        f"torch {torch.__version__}, attn_implementation={variants[0].model.config._attn_implementation}",
        f"prefill: one forward pass over {args.batch} x {args.seq} random tokens with the KV cache on; KV cache MB: "
        "what that cache holds afterwards (a removed attention block keeps a 1-wide placeholder)",
        f"decode: greedy generation at batch 1 after a {args.prompt}-token prompt; tok/s = {args.new_tokens} / "
        f"(time for {args.new_tokens + 1} new tokens - time for 1)",
        f"{args.rounds} interleaved rounds (every model once per round, shuffled), medians reported; speedup = dense "
        "median time / pruned median time; dense = the model exported and reloaded with nothing pruned (every timed "
        "model takes that path), 'dense as loaded' = the model as load_model returns it, for contrast",
        "predicted = dense / pruned multiply-accumulates at the prefill length: attention + feed-forward "
        "(synprune.selection.budget.CostModel), and the whole model with the LM head (embeddings are look-ups)",
        f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; build {t_built - t_start:.0f} s, "
        f"total {time.perf_counter() - t_start:.0f} s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(["# Exported pruned causal LM vs dense", "", *lines, "", *[f"- {n}" for n in notes]]) + "\n"
    print(text)
    atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
