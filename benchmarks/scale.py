"""How the layer-local recipe's memory and time grow: peak resident memory and seconds per layer, in memory
(`--layerwise`: the model loaded whole) against streamed (`--stream`: one layer at a time from its files), on
SmolLM2-135M and on randomly initialised checkpoints of real large shapes written to disk as bfloat16
safetensors shards (random weights say nothing about quality, only about memory and time).

    python benchmarks/scale.py write DIR [--shapes llama-1b,qwen-3b,llama-8b]   # the random checkpoints
    python benchmarks/scale.py run MODEL --mode stream|memory [--calib N] [--layers K]  # one measured run
    python benchmarks/scale.py table DIR [--shapes ...] [--calib 16,32] > benchmarks/results/scale.md

Every measured run is its own process (`/usr/bin/time -v` style: the child's peak RSS from getrusage), with the
recipe `flap` heads + `wanda` neurons, `--budget params:0.7`, `--repair none`, EWT sentences (at most 128
tokens, about 15 on average) for calibration (evaluation on 16 sentences, so that most of the time is the pruning). `--layers K` stops a streamed run
after K layers (to time a model whose whole run does not fit the time; the table says so where it did).
A checkpoint is written shard by shard (one layer per shard), never holding the model in memory.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "llama-1b": dict(model_type="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
                     head_dim=64),
    "qwen-3b": dict(model_type="qwen2", hidden_size=2048, num_hidden_layers=36, num_attention_heads=16,
                    num_key_value_heads=2, intermediate_size=11008, vocab_size=151936, tie_word_embeddings=True),
    "llama-8b": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
                     head_dim=128),
}


def write_checkpoint(folder: Path, name: str) -> Path:
    """A random bfloat16 checkpoint of shape `name`: the skeleton on the meta device names every tensor; each
    layer's tensors are drawn (N(0, 0.02), norms 1) and written as one shard, then dropped."""
    import torch
    import transformers
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    spec = dict(SHAPES[name])
    out = folder / name
    if (out / "model.safetensors.index.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = transformers.AutoConfig.for_model(spec.pop("model_type"), max_position_embeddings=4096, **spec)
    config.architectures = [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[config.model_type]]
    config.torch_dtype = "bfloat16"
    with init_empty_weights():
        model = transformers.AutoModelForCausalLM.from_config(config)
    names = [n for n, _ in model.named_parameters()]  # tied parameters once
    shapes = dict((n, p.shape) for n, p in model.named_parameters())
    groups: dict[str, list[str]] = {}
    for n in names:
        key = n.split(".layers.")[1].split(".")[0] if ".layers." in n else "rest"
        groups.setdefault(key, []).append(n)
    g = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    keys = sorted((k for k in groups if k != "rest"), key=int) + ["rest"]
    for j, key in enumerate(keys):
        file = f"model-{j + 1:05d}-of-{len(keys):05d}.safetensors"
        tensors = {}
        for n in groups[key]:
            if "norm" in n:
                t = torch.ones(shapes[n], dtype=torch.bfloat16)
            else:
                t = (torch.randn(shapes[n], generator=g) * 0.02).to(torch.bfloat16)
            tensors[n] = t
            weight_map[n] = file
            total += t.numel() * 2
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config.save_pretrained(out)
    from synprune.model.load import SMOLLM2_FILE, smollm2_path

    tok = transformers.AutoTokenizer.from_pretrained(str(smollm2_path().parent), gguf_file=SMOLLM2_FILE)
    tok.save_pretrained(out)  # SmolLM2's vocabulary: its ids are valid rows of any of these embeddings
    return out


def run_one(model: str, mode: str, calib: int, layers: int | None, out: Path) -> dict:
    """One run of the recipe, in this process; prints a JSON line with its own measurements."""
    from synprune.run import stream

    if layers:
        stream.STOP_AFTER = layers
    t0 = time.perf_counter()
    result = stream.prune_layerwise(model, "ewt", stream=mode == "stream", calib_size=calib, eval_size=16,
                                    max_length=128, batch_size=8, method="flap", units="heads,neurons",
                                    budget="params:0.7", out=out)
    d = result.details
    return {"model": model, "mode": mode, "calib": calib, "layers_run": len(d["seconds_per_layer"]),
            "seconds_per_layer": d["seconds_per_layer"], "seconds": time.perf_counter() - t0,
            "perplexity": result.metric["pruned"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(model: str, mode: str, calib: int, layers: int | None, scratch: Path) -> dict:
    out = scratch / f"{Path(model).name}-{mode}-{calib}"
    cmd = [sys.executable, __file__, "run", model, "--mode", mode, "--calib", str(calib), "--out", str(out)]
    if layers:
        cmd += ["--layers", str(layers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"model": model, "mode": mode, "calib": calib, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["wall"] = time.perf_counter() - t0
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | mode | calibration texts | layers run | s / layer (mean) | total s | peak RSS (MB) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['mode']} | {r['calib']} | - | - | - | failed: {r['error'][:80]} |")
            continue
        spl = r["seconds_per_layer"]
        lines.append(f"| {Path(r['model']).name} | {r['mode']} | {r['calib']} | {r['layers_run']} | "
                     f"{sum(spl) / max(len(spl), 1):.2f} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("dir", type=Path)
    w.add_argument("--shapes", default="llama-1b,qwen-3b,llama-8b")
    r = sub.add_parser("run")
    r.add_argument("model")
    r.add_argument("--mode", choices=("stream", "memory"), required=True)
    r.add_argument("--calib", type=int, default=16)
    r.add_argument("--layers", type=int, default=None)
    r.add_argument("--out", type=Path, default=Path("/tmp/synprune-scale"))
    t = sub.add_parser("table")
    t.add_argument("models", nargs="+")
    t.add_argument("--modes", default="memory,stream")
    t.add_argument("--calib", default="16,32")
    t.add_argument("--layers", type=int, default=None)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.cmd == "write":
        for name in a.shapes.split(","):
            t0 = time.perf_counter()
            path = write_checkpoint(a.dir, name)
            print(f"{path}: written in {time.perf_counter() - t0:.0f} s", flush=True)
    elif a.cmd == "run":
        print(json.dumps(run_one(a.model, a.mode, a.calib, a.layers, a.out)), flush=True)
    else:
        rows = []
        for model in a.models:
            for mode in a.modes.split(","):
                for calib in (int(c) for c in a.calib.split(",")):
                    rows.append(measure(model, mode, calib, a.layers, Path("/tmp/synprune-scale")))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        print(table(rows))


if __name__ == "__main__":
    main()
