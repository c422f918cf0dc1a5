"""How the layer-local recipe's memory and time grow: peak resident memory and seconds per layer, in memory
(`--layerwise`: the model loaded whole) against streamed (`--stream`: one layer at a time from its files), on
SmolLM2-135M and on randomly initialised checkpoints of real large shapes written to disk as bfloat16
safetensors shards (random weights say nothing about quality, only about memory and time).

    python benchmarks/scale.py write DIR [--shapes llama-1b,qwen-3b,llama-8b]   # the random checkpoints
    python benchmarks/scale.py run MODEL --mode stream|memory [--calib N] [--layers K]  # one measured run
    python benchmarks/scale.py table DIR [--shapes ...] [--calib 16,32] > benchmarks/results/scale.md
    python benchmarks/scale.py profile MODEL --mode stream|memory [--calib N]   # where the peak comes from
    python benchmarks/scale.py parts      # what single pieces cost (gguf's reader, scipy, a tokenizer copy)

Every measured run is its own process (`/usr/bin/time -v` style: the child's peak RSS from getrusage), with the
recipe `flap` heads + `wanda` neurons, `--budget params:0.7`, `--repair none`, EWT sentences (at most 128
tokens, about 15 on average) for calibration (evaluation on 16 sentences, so that most of the time is the pruning). `--layers K` stops a streamed run
after K layers (to time a model whose whole run does not fit the time; the table says so where it did);
`--export` makes each run write its export as well (measured, then removed).
A checkpoint is written shard by shard (one layer per shard), never holding the model in memory.

`profile` runs one measured run in this process with a thread sampling the resident memory (VmRSS) every 5 ms,
and prints, stage by stage, the memory at the stage's start, its peak and its end: first the imports one by
one, then the run's stages (marked where the run calls the functions that start them).
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


def run_one(model: str, mode: str, calib: int, layers: int | None, out: Path, export: bool = False) -> dict:
    """One run of the recipe, in this process; prints a JSON line with its own measurements. `export`: the
    run writes its export too (to OUT-export, measured, then removed)."""
    import shutil

    from synprune.run import stream

    if layers:
        stream.STOP_AFTER = layers
    t0 = time.perf_counter()
    folder = out.with_name(out.name + "-export") if export else None
    result = stream.prune_layerwise(model, "ewt", stream=mode == "stream", calib_size=calib, eval_size=16,
                                    max_length=128, batch_size=8, method="flap", units="heads,neurons",
                                    budget="params:0.7", out=out, export=folder, overwrite=True)
    seconds = time.perf_counter() - t0
    exported = None
    if folder is not None:
        exported = sum(f.stat().st_size for f in folder.iterdir()) / 1e9
        shutil.rmtree(folder)
    d = result.details
    return {"model": model, "mode": mode, "calib": calib, "layers_run": len(d["seconds_per_layer"]),
            "seconds_per_layer": d["seconds_per_layer"], "seconds": seconds, "export_gb": exported,
            "dense_perplexity": result.metric["dense"], "perplexity": result.metric["pruned"],
            "pruned_heads": len(result.pruned_heads), "pruned_neurons": len(result.pruned_neurons or []),
            "params_kept": (d.get("budget") or {}).get("params_kept"),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def profile(model: str, mode: str, calib: int) -> str:
    """One run (as `run_one`) with its resident memory sampled every 5 ms, stage by stage (module doc)."""
    import importlib
    import threading

    stages: list[list] = []  # [name, rss at start, peak, rss at end, start time]

    def mark(name: str) -> None:
        rss = _rss_mb()
        if stages:
            stages[-1][2], stages[-1][3] = max(stages[-1][2], rss), rss
        stages.append([name, rss, rss, rss, time.perf_counter()])

    def sample() -> None:
        while True:
            rss = _rss_mb()
            stage = stages[-1]
            stage[2], stage[3] = max(stage[2], rss), rss
            time.sleep(0.005)

    mark("python")
    threading.Thread(target=sample, daemon=True).start()
    for name in ("numpy", "torch", "transformers", "transformers.modeling_utils", "synprune.run.stream",
                 "synprune.evaluation.evaluate", "synprune.run.prune"):
        mark(f"import {name}")
        importlib.import_module(name)
    import transformers

    import synprune.data.tasks as tasks
    import synprune.evaluation.evaluate as evaluate
    import synprune.model.layers as layers
    import synprune.model.load as load

    def wrap(owner, attr: str, name, first_only: bool = False) -> None:
        real = getattr(owner, attr)
        seen = []

        def call(*args, **kwargs):
            label = name(*args, **kwargs) if callable(name) else name
            if label and not (first_only and seen):
                mark(label)
                seen.append(1)
            return real(*args, **kwargs)
        setattr(owner, attr, call)

    wrap(tasks, "load_task", "read the EWT texts")
    wrap(layers.FileLayers, "__init__", "config, model skeleton (imports the model's code)")
    wrap(transformers.AutoTokenizer, "from_pretrained", "tokenizer")
    wrap(transformers.AutoModelForCausalLM, "from_pretrained", "the whole model's weights, float32")
    wrap(load, "as_task_model", "load the whole model (and its tokenizer)")
    wrap(evaluate, "prepare", "tokenize the texts", first_only=True)
    for cls in (layers.FileLayers, layers.ModelLayers):
        wrap(cls, "load_outside", lambda self, which, tokens=None: {
            "input": "embedding (rows used), first layer's inputs",
            "output": "perplexity (final norm, head ranges)"}[which])
        wrap(cls, "layer", "the layers, one at a time", first_only=True)
    row = run_one(model, mode, calib, None, Path(f"/tmp/synprune-scale/profile-{mode}"))
    mark("end")
    lines = [f"`python benchmarks/scale.py profile {model} --mode {mode} --calib {calib}`: peak "
             f"{row['peak_rss_mb']:.0f} MB (getrusage)", "",
             "| stage | RSS at start (MB) | peak in stage (MB) | RSS at end (MB) | seconds |", "|---|---:|---:|---:|---:|"]
    for (name, start, peak, end, t), following in zip(stages, stages[1:]):
        lines.append(f"| {name} | {start:.0f} | {peak:.0f} | {end:.0f} | {following[4] - t:.1f} |")
    return "\n".join(lines)


def measure(model: str, mode: str, calib: int, layers: int | None, scratch: Path, export: bool = False) -> dict:
    out = scratch / f"{Path(model).name}-{mode}-{calib}"
    cmd = [sys.executable, __file__, "run", model, "--mode", mode, "--calib", str(calib), "--out", str(out)]
    if layers:
        cmd += ["--layers", str(layers)]
    if export:
        cmd += ["--export"]
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


PARTS = {  # what one piece of a run costs: (setup, the piece), each pair in a fresh process
    "gguf.GGUFReader(SmolLM2's file), held": ("import gguf, torch, transformers", "r = gguf.GGUFReader(path)"),
    "model.gguf_file.GGUFFile(the same file), held": (
        "import gguf, torch, transformers; from synprune.model.gguf_file import GGUFFile", "r = GGUFFile(path)"),
    "scipy.stats + sklearn.metrics, imported after transformers' model code and synprune.run.stream": (
        "import torch, transformers, transformers.modeling_utils, synprune.run.stream",
        "import scipy.stats, sklearn.metrics"),
    "SmolLM2's tokenizer, deep-copied (with_bos before)": (
        "import copy, torch, transformers; t = transformers.AutoTokenizer.from_pretrained(str(path.parent), "
        "gguf_file=path.name)", "u = copy.deepcopy(t)"),
}


def parts() -> str:
    """`PARTS`, each measured in its own process: resident memory before, peak during, and after (held)."""
    code = ("import sys\nfrom synprune.model.load import smollm2_path\npath = smollm2_path()\n"
            "def rss(k):\n    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(k)) / 1024\n"
            "exec(sys.argv[1])\nimport gc; gc.collect()\nbefore = rss('VmRSS')\n"
            "open('/proc/self/clear_refs', 'w').write('5')\nexec(sys.argv[2])\n"
            "print(before, rss('VmHWM'), rss('VmRSS'))\n")
    lines = ["| piece | RSS before (MB) | peak (MB) | after, held (MB) | cost held (MB) |", "|---|---:|---:|---:|---:|"]
    for name, (setup, piece) in PARTS.items():
        out = subprocess.run([sys.executable, "-c", code, setup, piece], capture_output=True, text=True)
        if out.returncode:
            lines.append(f"| {name} | failed: {(out.stderr.strip().splitlines() or ['?'])[-1][:80]} | | | |")
            continue
        before, peak, after = map(float, out.stdout.split()[-3:])
        lines.append(f"| {name} | {before:.0f} | {peak:.0f} | {after:.0f} | {after - before:.0f} |")
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
    r.add_argument("--export", action="store_true", help="write the export too (measured, then removed)")
    sub.add_parser("parts")
    f = sub.add_parser("profile")
    f.add_argument("model")
    f.add_argument("--mode", choices=("stream", "memory"), required=True)
    f.add_argument("--calib", type=int, default=16)
    t = sub.add_parser("table")
    t.add_argument("models", nargs="+")
    t.add_argument("--modes", default="memory,stream")
    t.add_argument("--calib", default="16,32")
    t.add_argument("--layers", type=int, default=None)
    t.add_argument("--export", action="store_true", help="each run writes its export too (measured, then removed)")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.cmd == "write":
        for name in a.shapes.split(","):
            t0 = time.perf_counter()
            path = write_checkpoint(a.dir, name)
            print(f"{path}: written in {time.perf_counter() - t0:.0f} s", flush=True)
    elif a.cmd == "parts":
        print(parts(), flush=True)
    elif a.cmd == "profile":
        print(profile(a.model, a.mode, a.calib), flush=True)
    elif a.cmd == "run":
        print(json.dumps(run_one(a.model, a.mode, a.calib, a.layers, a.out, a.export)), flush=True)
    else:
        rows = []
        for model in a.models:
            for mode in a.modes.split(","):
                for calib in (int(c) for c in a.calib.split(",")):
                    rows.append(measure(model, mode, calib, a.layers, Path("/tmp/synprune-scale"), a.export))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        print(table(rows))


if __name__ == "__main__":
    main()
