"""How close a GGUF file written by synprune is to the pruned model it came from, per file type (f32, f16, Q8_0).

Takes an exported standard checkpoint (`synprune prune ... --layout uniform --export DIR`, or `synprune export`),
writes it as GGUF in each type (`synprune.export.gguf.write_gguf`, the tokenizer copied from `--source-gguf` when
given), reads every file back with transformers' GGUF loader (`read_back`: float32, dequantized) and compares, on
windows of UD English-EWT test text: the largest |logit difference| (also relative to the largest |logit|), the
mean |difference|, how often the top-1 next token agrees, and the perplexity of each. Also the file sizes.

    heavy python benchmarks/gguf_roundtrip.py --export DIR --source-gguf smollm2 --out benchmarks/results/gguf_roundtrip.md
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EWT = ROOT.parent / "shared" / "data" / "ud" / "en_ewt" / "en_ewt-ud-test.conllu"


def windows(tokenizer, n: int, length: int) -> torch.Tensor:
    """`n` windows of `length` tokens of consecutive EWT test sentences."""
    text = " ".join(line[len("# text = "):].strip() for line in EWT.read_text(encoding="utf-8").splitlines()
                    if line.startswith("# text = "))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < n * length:
        raise SystemExit(f"EWT gives {len(ids)} tokens, fewer than {n} x {length}")
    return torch.tensor(ids[: n * length]).view(n, length)


@torch.no_grad()
def run_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(input_ids=row[None]).logits.float() for row in ids])


def perplexity(logits: torch.Tensor, ids: torch.Tensor) -> float:
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return math.exp(float(loss))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", required=True, help="a standard checkpoint folder (uniform layout)")
    ap.add_argument("--source-gguf", default=None, help="copy the tokenizer from this GGUF file (or 'smollm2')")
    ap.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0"])
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None, help="write the table (markdown) and a .json beside it")
    ap.add_argument("--made-by", default=None, help="the command that wrote --export, for the record")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import synprune
    from synprune.export.gguf import read_back, write_gguf
    from synprune.model.load import smollm2_path

    torch.set_num_threads(2)
    source = str(smollm2_path()) if args.source_gguf == "smollm2" else args.source_gguf
    model = AutoModelForCausalLM.from_pretrained(args.export, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.export)
    ids = windows(tokenizer, args.windows, args.length)
    reference = run_logits(model, ids)
    scale = float(reference.abs().max())
    rows = [{"type": "export (transformers)", "bytes": None, "max_abs_diff": 0.0, "relative": 0.0, "mean_abs_diff": 0.0,
             "top1_agree": 1.0, "perplexity": perplexity(reference, ids)}]
    with tempfile.TemporaryDirectory() as tmp:
        for gtype in args.types:
            path = Path(tmp) / f"model-{gtype}.gguf"
            t0 = time.perf_counter()
            info = write_gguf(model, tokenizer, path, gtype, tokenizer_gguf=source, verify=False)
            t_write = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = read_back(path)
            t_read = time.perf_counter() - t0
            got = run_logits(back, ids)
            diff = (got - reference).abs()
            rows.append({"type": gtype, "bytes": info["bytes"], "max_abs_diff": float(diff.max()),
                         "relative": float(diff.max()) / scale, "mean_abs_diff": float(diff.mean()),
                         "top1_agree": float((got.argmax(-1) == reference.argmax(-1)).float().mean()),
                         "perplexity": perplexity(got, ids), "write_s": round(t_write, 1), "read_s": round(t_read, 1),
                         "tensor_types": info["tensor_types"]})
            del back
            print(json.dumps(rows[-1]), file=sys.stderr)
    pruning = json.loads((Path(args.export) / "synprune_pruning.json").read_text())
    lines = ["# GGUF round trip: written by synprune, read back by transformers", "",
             "| file | size MB | max abs logit diff | relative to max logit | mean abs diff | top-1 agreement | perplexity |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        size = "" if r["bytes"] is None else f"{r['bytes'] / 1e6:.1f}"
        lines.append(f"| {r['type']} | {size} | {r['max_abs_diff']:.3g} | {r['relative']:.2e} | {r['mean_abs_diff']:.3g} "
                     f"| {100 * r['top1_agree']:.2f}% | {r['perplexity']:.3f} |")
    lines += ["", f"- model: {args.export} ({pruning.get('model_class')}, heads per layer {pruning['heads_per_layer'][0]}, "
              f"KV groups per layer {pruning['kv_groups_per_layer'][0]}, parameters {pruning['parameters']['pruned']:,} "
              f"of {pruning['parameters']['dense']:,}); tokenizer copied from {source or 'the export folder'}",
              f"- text: {args.windows} windows of {args.length} tokens of UD English-EWT test; logits in float32 on CPU; "
              f"largest |logit| {scale:.3g}",
              f"- synprune {synprune.__version__}, torch {torch.__version__}, gguf "
              f"{__import__('importlib.metadata').metadata.version('gguf')}, transformers "
              f"{__import__('transformers').__version__}",
              *([f"- export made by: `{args.made_by}`"] if args.made_by else []),
              "- command: `python benchmarks/gguf_roundtrip.py " + " ".join(
                  a if " " not in a else repr(a) for a in sys.argv[1:]) + "`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from synprune.io import atomic_write_json, atomic_write_text

        atomic_write_text(args.out, text)
        atomic_write_json(args.out.with_suffix(".json"), rows)


if __name__ == "__main__":
    main()
