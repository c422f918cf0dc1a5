"""Width pruning of a decoder LLM, synprune against the other tools, side by side in one run (issue 26).

Every tool prunes the same model (SmolLM2-135M from the bundled GGUF by default) on the same calibration text (a
seeded sample of UD English EWT dev sentences, as `--task ewt` draws it) to the same budgets, counted as users
count them: the pruned model keeps F of the dense model's TOTAL parameters (embeddings included, tied ones once),
each tool tuned to within 1% of it. Every pruned model is then scored the same way, in this (synprune's)
environment, on the same evaluation windows:
- windowed perplexity: EWT test joined, non-overlapping windows of `--ppl-window` tokens, start token first,
  the first `--eval-windows` windows (`synprune.evaluation.lm.window_perplexity`); and x dense;
- zero-shot SST-2 accuracy (synprune's prompt, `--sst2-size` seeded dev examples);
- prune seconds (the tool's own pruning, model loading excluded), parameters (counted on the pruned model);
- exported prefill (batch x seq tokens) and batch-1 greedy decode speed against the dense model exported the same
  way, interleaved rounds, medians (`decoder_speed.measure`).

Rows: synprune recipes (`--recipes`, each `METHOD[/key=value...]`, e.g. `fisher/repair=ls`; `recommended` is
`synprune.run.recipes`' decoder default), torch-pruning 1.6.1's LLM recipe (magnitude and Taylor importance),
optipfair 0.4.2's MLP-width pruning (MAW, and its hybrid: MAW with calibration activations), random units
(query heads and feed-forward neurons in a seeded random order until the budget is met; `--random-seeds`).
A tool that fails or runs past `--peer-timeout` gets its one-line error in the table; a torch-pruning time-out
is not retried at the other budgets.

The peers run in their own environment, `--peers-venv` (default runs/peers-venv), built on first use: a venv
that sees this environment's packages read-only (a .pth line; so the same torch and transformers) and has
torch-pruning==1.6.1 and optipfair==0.4.2 installed into itself with pip --no-deps. Nothing is installed here.

Resumable: each cell's numbers go to WORK/cells/*.json as soon as they exist (dense included), and a rerun
skips finished cells; speed is measured per budget once all its cells are in (WORK/speed-F.json).

    heavy --alone python benchmarks/decoder_peers.py --out benchmarks/results/decoder_peers.md
    python benchmarks/decoder_peers.py --budgets 0.8 --eval-windows 4 --sst2-size 16 --calib-size 8 \\
        --random-seeds 0 --rounds 1 --work /tmp/dp --out /tmp/dp.md            # a quick try
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = {"torch-pruning": "torch-pruning==1.6.1", "optipfair": "optipfair==0.4.2"}
PEER_CELLS = ("tp-magnitude", "tp-taylor", "optipfair-maw", "optipfair-hybrid")
DEFAULT_RECIPES = "fisher/repair=ls,flap/repair=bias,output-fisher,recommended"
STAGE = ["pruning"]  # what a peer was doing, for its time-out message


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="write the table as markdown here")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "decoder_peers", help="cells, models, speed records")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--budgets", default="0.8,0.9,0.7", help="fractions of the dense model's total parameters to keep, "
                   "run in this order")
    p.add_argument("--recipes", default=DEFAULT_RECIPES, help="synprune recipes, comma-separated METHOD[/key=value...]")
    p.add_argument("--peers", default=",".join(PEER_CELLS), help="peer rows to run (empty: none)")
    p.add_argument("--random-seeds", default="0,1,2")
    p.add_argument("--calib-size", type=int, default=64)
    p.add_argument("--ppl-window", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--sst2-size", type=int, default=200, help="seeded SST-2 dev examples for zero-shot accuracy (0: skip)")
    p.add_argument("--batch", type=int, default=8, help="prefill batch")
    p.add_argument("--seq", type=int, default=256, help="prefill length")
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="interleaved speed rounds (0: no speed columns)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peer-timeout", type=float, default=150.0, help="seconds a peer may take to prune one cell")
    p.add_argument("--peers-venv", type=Path, default=ROOT / "runs" / "peers-venv")
    p.add_argument("--render", action="store_true", help="only render the table from WORK's cells")
    p.add_argument("--peer-cell", help=argparse.SUPPRESS)  # internal: run one peer cell (inside the peers' venv)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------- shared data

def texts(args) -> tuple[list[str], list[str]]:
    """(calibration sentences, evaluation texts): a seeded sample of EWT dev as `--task ewt` draws it; EWT test."""
    from synprune.data.tasks import load_task, make_split

    data = load_task("ewt")
    split = make_split(data, args.calib_size, 0)
    return [e.text_a for e in split.calibration], [e.text_a for e in data.splits["test"]]


def n_params(model: torch.nn.Module) -> int:
    from synprune.selection.budget import total_parameters

    return total_parameters(model)


# ------------------------------------------------------------------------------------------- peers (own venv)

def ensure_venv(venv: Path, packages: tuple[str, ...] = tuple(PEERS.values())) -> Path:
    """The peers' interpreter: a venv seeing this environment's packages through a .pth line, with `packages`
    (pip requirements or wheel files) installed into the venv itself (--no-deps: torch and transformers stay
    this environment's). Also used by gguf_roundtrip.py for llama.cpp's binding."""
    py = venv / "bin" / "python"
    marker = venv / "peers.json"
    if marker.is_file() and json.loads(marker.read_text()).get("peers") == sorted(packages):
        return py
    import site
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    here = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (purelib / "_main_env.pth").write_text("\n".join(dict.fromkeys(here)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target",
                    str(purelib), *packages], check=True)
    marker.write_text(json.dumps({"peers": sorted(packages), "python": sys.version}))
    return py


def run_peer(args, cell: dict, py: Path) -> dict:
    """One peer cell in the peers' venv, killed after --peer-timeout; its record, or its one-line error."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([str(py), __file__, "--peer-cell", json.dumps(cell), "--threads", str(args.threads)],
                              capture_output=True, text=True, timeout=args.peer_timeout + 120, env=env)
    except subprocess.TimeoutExpired:
        return {**cell, "error": f"killed after {time.perf_counter() - t0:.0f} s"}
    out = Path(cell["folder"]) / "peer.json"
    if proc.returncode == 0 and out.is_file():
        return {**cell, **json.loads(out.read_text())}
    lines = [l for l in (proc.stderr or proc.stdout).strip().splitlines() if l.strip()]
    return {**cell, "error": (lines[-1] if lines else f"exit {proc.returncode}")[:300]}


def peer_cell(spec: str, threads: int) -> None:
    """Inside the peers' venv: prune with one peer to the cell's budget, pickle the pruned module."""
    import signal

    cell = json.loads(spec)
    torch.set_num_threads(threads)
    from synprune.model.load import load_model

    tm = load_model(cell["model"])
    model, tok = tm.model, tm.tokenizer
    dense = n_params(model)
    calib = cell["calib"]
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError(
        f"did not finish within {cell['timeout']:.0f} s ({STAGE[0]})")))
    signal.alarm(int(cell["timeout"]))
    t0 = time.perf_counter()
    if cell["tool"].startswith("optipfair"):
        model, info = optipfair_prune(model, tok, calib, cell["budget"], hybrid=cell["tool"].endswith("hybrid"))
    else:
        model, info = torch_pruning_prune(model, tok, calib, cell["budget"], taylor=cell["tool"].endswith("taylor"))
    seconds = time.perf_counter() - t0
    signal.alarm(0)
    folder = Path(cell["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model, folder / "model.pt")
    (folder / "peer.json").write_text(json.dumps({"seconds": seconds, "params": n_params(model),
                                                   "dense_params": dense, "info": info}))


def optipfair_prune(model, tok, calib: list[str], keep: float, hybrid: bool):
    """optipfair's MLP-width pruning (MAW neuron pairs; hybrid: with calibration activations), its percentage
    set so that the whole model keeps `keep` of its parameters (feed-forward neurons are all it removes)."""
    import copy

    import optipfair

    dense = n_params(model)
    cfg = model.config
    per_neuron = 3 * cfg.hidden_size  # gate row, up row, down column (no biases in Llama's MLP)
    n_neurons = cfg.num_hidden_layers * cfg.intermediate_size
    pct = 100.0 * (1 - keep) * dense / (per_neuron * n_neurons)
    loader = None
    if hybrid:
        enc = tok(calib, return_tensors="pt", padding=True, truncation=True, max_length=128)
        loader = [{"input_ids": enc["input_ids"][i:i + 8], "attention_mask": enc["attention_mask"][i:i + 8]}
                  for i in range(0, len(calib), 8)]
    for _ in range(3):  # its neuron counts round per layer: retune once or twice to land within 1%
        pruned = optipfair.prune_model(copy.deepcopy(model), pruning_type="MLP_GLU", neuron_selection_method="MAW",
                                       pruning_percentage=pct, dataloader=loader, show_progress=False)
        kept = n_params(pruned) / dense
        if abs(kept - keep) <= 0.002:
            break
        pct += 100.0 * (kept - keep) * dense / (per_neuron * n_neurons)
    return pruned, {"pruning_percentage": pct, "hybrid": hybrid}


def torch_pruning_prune(model, tok, calib: list[str], keep: float, taylor: bool):
    """torch-pruning's LLM recipe (examples/LLMs/prune_llm.py): MetaPruner over the whole model, lm_head
    ignored, attention heads pruned as groups (num_heads), local pruning at one ratio; magnitude (L2) or
    Taylor importance (gradients of the calibration loss). The ratio is set from the budget."""
    import torch_pruning as tp

    cfg = model.config
    enc = tok(calib[:8], return_tensors="pt", padding=True, truncation=True, max_length=64)
    example = enc["input_ids"]
    imp = tp.importance.GroupTaylorImportance() if taylor else tp.importance.GroupMagnitudeImportance(p=2)
    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[m.q_proj] = cfg.num_attention_heads
            num_heads[m.k_proj] = cfg.num_key_value_heads
            num_heads[m.v_proj] = cfg.num_key_value_heads
    ratio = 1 - keep ** 0.5  # width pruning shrinks both sides of most matrices
    model.config.use_cache = False  # the traced output is the logits alone
    STAGE[0] = "still building MetaPruner's dependency graph"
    pruner = tp.pruner.MetaPruner(model, example_inputs=example, importance=imp, global_pruning=False,
                                  pruning_ratio=ratio, ignored_layers=[model.lm_head], num_heads=num_heads,
                                  prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
                                  output_transform=lambda out: out.logits)
    if taylor:
        model.zero_grad()
        out = model(input_ids=example, attention_mask=enc["attention_mask"], labels=example)
        out.loss.backward()
    STAGE[0] = "in pruner.step()"
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model, {"pruning_ratio": ratio}


# ------------------------------------------------------------------------------------------- synprune cells

def recipe_of(text: str):
    from synprune.run.recipes import parse_recipe, recommended

    return recommended("lm", True) if text == "recommended" else parse_recipe(text)


def synprune_cell(args, tm, cell: dict) -> dict:
    """A synprune recipe at `params:F`, exported (repairs folded) to the cell's folder."""
    from synprune.data.tasks import load_task
    from synprune.export.checkpoint import export_pruned
    from synprune.run.prune import prune

    recipe = recipe_of(cell["recipe"])
    opts = dict(recipe.options)
    r = prune(tm, None, load_task("ewt"), units="heads,neurons", budget=f"params:{cell['budget']}",
              method=recipe.method, calib_size=args.calib_size, eval_size=2, **opts)
    export_pruned(tm.model, tm.tokenizer, r.pruned_heads, cell["folder"], neurons=r.pruned_neurons, repair=r.repair,
                  overwrite=True)
    return {**cell, "seconds": r.details["prune_seconds"], "spec": recipe.spec,
            "heads_pruned": len(r.pruned_heads), "neurons_pruned": len(r.pruned_neurons)}


def random_cell(args, tm, cell: dict) -> dict:
    """Query heads and neurons in one seeded random order, pruned until the total-parameter budget is met."""
    from synprune.export.checkpoint import export_pruned
    from synprune.model.masking import neuron_grid
    from synprune.selection.budget import CostModel

    t0 = time.perf_counter()
    cost = CostModel.from_model(tm.model)
    layers, heads = tm.grid
    _, per = neuron_grid(tm.model)
    units = [("h", (l, h)) for l in range(layers) for h in range(heads)] + \
            [("n", (l, i)) for l in range(layers) for i in range(per)]
    random.Random(cell["seed"]).shuffle(units)
    hs, ns = [], []
    saved, target = 0.0, (1 - cell["budget"]) * cost.total("params")
    # approximate running cost (a query head's share of its group), then exact checks near the end
    ch, cn = cost.head_cost("params"), cost.neuron_cost("params")
    for kind, u in units:
        if saved >= target * 0.98 and cost.kept_fraction(hs, "params", neurons=ns) <= cell["budget"]:
            break
        if kind == "h":
            if sum(1 for l, _ in hs if l == u[0]) == heads - 1:
                continue  # never empty a layer's attention by chance (export keeps a 1-wide placeholder)
            hs.append(u)
            saved += ch
        else:
            ns.append(u)
            saved += cn
    seconds = time.perf_counter() - t0
    export_pruned(tm.model, tm.tokenizer, sorted(hs), cell["folder"], neurons=sorted(ns), overwrite=True)
    return {**cell, "seconds": seconds, "heads_pruned": len(hs), "neurons_pruned": len(ns)}


# ------------------------------------------------------------------------------------------- scoring

def load_cell_model(cell: dict, attn: str):
    folder = Path(cell["folder"])
    if (folder / "model.pt").is_file():
        model = torch.load(folder / "model.pt", weights_only=False)
    else:
        from synprune.model.pruned import load_pruned

        model, _ = load_pruned(folder)
    model.set_attn_implementation(attn)
    return model.eval()


@torch.inference_mode()
def score(args, model, tok, eval_texts: list[str]) -> dict:
    from synprune.data.tasks import load_task, make_split
    from synprune.evaluation.evaluate import evaluate, prepare, task_metrics
    from synprune.evaluation.lm import window_perplexity
    from synprune.model.load import TaskModel

    out = {"ppl": window_perplexity(model, tok, eval_texts, args.ppl_window, args.eval_windows)}
    if args.sst2_size:
        tm = TaskModel(model, tok, "lm", "cell", "", None)
        data = load_task("sst2")
        names = task_metrics(tm, data)
        examples = make_split(data, 1, 0, args.sst2_size).evaluation["dev"]
        out["sst2"] = evaluate(tm, prepare(tm, examples, batch_size=8), names)["accuracy"]
    return out


def run_cell(args, tm, cell: dict, eval_texts, py) -> dict:
    path = args.work / "cells" / f"{cell['key']}.json"
    if path.is_file():
        return json.loads(path.read_text())
    if args.render:
        return {**{k: v for k, v in cell.items() if k != "calib"}, "error": "not run yet"}
    print(f"[{time.strftime('%H:%M:%S')}] {cell['key']}", flush=True)
    try:
        if cell["tool"] == "synprune":
            rec = synprune_cell(args, tm, cell)
        elif cell["tool"] == "random":
            rec = random_cell(args, tm, cell)
        else:
            rec = run_peer(args, {**cell, "model": args.model, "calib": cell["calib"], "timeout": args.peer_timeout}, py)
            rec.pop("calib", None)
        if "error" not in rec:
            model = load_cell_model(rec, "sdpa")
            rec["params"] = n_params(model)
            rec.update(score(args, model, tm.tokenizer, eval_texts))
            del model
    except Exception as e:  # a failing cell is a row with its error, not a lost run
        traceback.print_exc()
        rec = {**cell, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
    rec.pop("calib", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1))
    return rec


def speed(args, budget: float, cells: list[dict], dense_folder: Path) -> dict:
    """Prefill and decode medians of the budget's exported models and the exported dense model, interleaved."""
    path = args.work / f"speed-{budget:g}.json"
    if path.is_file():
        return json.loads(path.read_text())
    sys.path.insert(0, str(HERE))
    from decoder_speed import Variant, measure

    ok = [c for c in cells if "error" not in c and Path(c["folder"]).exists()]
    variants = [Variant("dense", load_cell_model({"folder": str(dense_folder)}, "sdpa"), [], 0)]
    variants += [Variant(c["key"], load_cell_model(c, "sdpa"), [], 0) for c in ok]
    measure(variants, argparse.Namespace(batch=args.batch, seq=args.seq, prompt=args.prompt,
                                         new_tokens=args.new_tokens, rounds=args.rounds))
    out = {v.name: {k: statistics.median(t) for k, t in v.times.items()} for v in variants}
    path.write_text(json.dumps(out, indent=1))
    return out


# ------------------------------------------------------------------------------------------- table

def cells_for(args, budget: float, calib: list[str]) -> list[dict]:
    b = f"{budget:g}"
    out = []
    recipes = [x.strip() for x in args.recipes.split(",") if x.strip()]
    best = recipe_of("recommended").spec
    for r in dict.fromkeys(recipe_of(x).spec for x in recipes):  # `recommended` runs once, under its own spec
        out.append({"key": f"{b}-synprune-{r.replace('/', '_')}", "tool": "synprune", "recipe": r, "budget": budget,
                    "label": f"synprune `{r}`" + (" (recommended default)" if r == best else "")})
    for s in (int(x) for x in args.random_seeds.split(",") if x.strip()):
        out.append({"key": f"{b}-random-{s}", "tool": "random", "seed": s, "budget": budget,
                    "label": "random units (heads + neurons)"})
    peers = [x for x in args.peers.split(",") if x.strip()]
    peers.sort(key=lambda p: p.startswith("tp-"))  # torch-pruning last: it is the one likely to time out
    for p in peers:
        out.append({"key": f"{b}-{p}", "tool": p, "budget": budget, "calib": calib,
                    "label": {"tp-magnitude": "torch-pruning 1.6.1, LLM recipe, magnitude",
                              "tp-taylor": "torch-pruning 1.6.1, LLM recipe, Taylor",
                              "optipfair-maw": "optipfair 0.4.2, MLP width, MAW",
                              "optipfair-hybrid": "optipfair 0.4.2, MLP width, hybrid (MAW + activations)"}[p]})
    for c in out:
        c["folder"] = str(args.work / "models" / c["key"])
    return out


def render(args, dense: dict, results: dict[float, list[dict]], speeds: dict[float, dict]) -> str:
    lines = [f"# Decoder width pruning: synprune against the other tools ({args.model})", "",
             f"Budgets: fraction of the dense model's total parameters kept ({dense['params']:,} dense, embeddings "
             f"included, tied once). Perplexity: EWT test joined, non-overlapping windows of {args.ppl_window} tokens, "
             f"start token first, first {args.eval_windows} windows (dense {dense['ppl']['perplexity']:.2f}). SST-2: "
             f"zero-shot accuracy on {args.sst2_size} seeded dev examples (dense {dense.get('sst2', float('nan')):.2f}). "
             f"Calibration: {args.calib_size} seeded EWT dev sentences for every tool. Speed: exported models, float32, "
             f"CPU, {args.threads} threads, prefill {args.batch} x {args.seq} tokens, batch-1 greedy decode of "
             f"{args.new_tokens} tokens, {args.rounds} interleaved rounds, medians, against the dense model exported "
             "the same way (synprune: export_pruned/load_pruned; peers: their pruned module pickled and reloaded).", ""]
    for budget, cells in sorted(results.items(), reverse=True):
        sp = speeds.get(budget, {})
        lines += [f"## {budget:g} of total parameters", "",
                  "| tool / recipe | perplexity | x dense | SST-2 | prune s | parameters (x dense) | prefill x dense | decode x dense |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        rand = [c for c in cells if c["tool"] == "random" and "error" not in c]
        for c in cells:
            if c["tool"] == "random" and c is not (rand[0] if rand else None) and "error" not in c:
                continue
            if c["tool"] == "random" and "error" not in c and len(rand) > 1:
                ppls = [r["ppl"]["perplexity"] for r in rand]
                m, sd = statistics.fmean(ppls), statistics.stdev(ppls)
                acc = statistics.fmean(r.get("sst2", float("nan")) for r in rand)
                lines.append(f"| random units, {len(rand)} seeds (mean ± sd) | {m:.2f} ± {sd:.2f} | "
                             f"{m / dense['ppl']['perplexity']:.2f} | {acc:.2f} | "
                             f"{statistics.fmean(r['seconds'] for r in rand):.0f} | "
                             f"{statistics.fmean(r['params'] for r in rand):,.0f} "
                             f"({statistics.fmean(r['params'] for r in rand) / dense['params']:.3f}) | "
                             f"{_speed(sp, rand[0]['key'], 'prefill')} | {_speed(sp, rand[0]['key'], 'decode')} |")
                continue
            if "error" in c:
                what = c["error"] if c["error"] == "not run yet" else f"failed: {c['error']}"
                lines.append(f"| {c['label']} | {what.replace('|', '/')} | - | - | - | - | - | - |")
                continue
            p = c["ppl"]["perplexity"]
            lines.append(f"| {c['label']} | {p:,.2f} | {p / dense['ppl']['perplexity']:.2f} | "
                         f"{c.get('sst2', float('nan')):.2f} | {c['seconds']:.0f} | "
                         f"{c['params']:,} ({c['params'] / dense['params']:.3f}) | "
                         f"{_speed(sp, c['key'], 'prefill')} | {_speed(sp, c['key'], 'decode')} |")
        lines.append("")
    if speeds:
        d = next(iter(speeds.values())).get("dense", {})
        if d:
            lines.append(f"Dense exported: prefill {args.batch * args.seq / d['prefill']:.0f} tok/s, decode "
                         f"{args.new_tokens / d['decode']:.1f} tok/s (in the first budget's rounds).")
    return "\n".join(lines) + "\n"


def _speed(sp: dict, key: str, what: str) -> str:
    if key not in sp or "dense" not in sp:
        return "-"
    return f"{sp['dense'][what] / sp[key][what]:.2f}x"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.peer_cell:
        peer_cell(args.peer_cell, args.threads)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from synprune.export.checkpoint import export_pruned
    from synprune.model.load import load_model
    from synprune.progress import set_quiet

    set_quiet(True)
    args.work.mkdir(parents=True, exist_ok=True)
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]  # run in the order given
    calib, eval_texts = texts(args)
    tm = load_model(args.model)
    dense_folder = args.work / "models" / "dense"
    dense_path = args.work / "cells" / "dense.json"
    if dense_path.is_file():
        dense = json.loads(dense_path.read_text())
    else:
        export_pruned(tm.model, tm.tokenizer, [], dense_folder, overwrite=True)
        dense = {"params": n_params(tm.model), **score(args, tm.model, tm.tokenizer, eval_texts)}
        dense_path.parent.mkdir(parents=True, exist_ok=True)
        dense_path.write_text(json.dumps(dense, indent=1))
    py = ensure_venv(args.peers_venv) if args.peers.strip() and not args.render else None
    results, speeds = {}, {}
    tp_failed: dict[str, str] = {}
    for budget in budgets:
        cells = []
        for cell in cells_for(args, budget, calib):
            if cell["tool"].startswith("tp-") and cell["tool"] in tp_failed:
                rec = {**cell, "error": f"not run: {tp_failed[cell['tool']]}"}
                rec.pop("calib", None)
            else:
                rec = run_cell(args, tm, cell, eval_texts, py)
            if rec["tool"].startswith("tp-") and "error" in rec and ("within" in rec["error"] or "killed" in rec["error"]):
                # both importances first build the same dependency graph: one time-out stands for both
                for t in ("tp-magnitude", "tp-taylor"):
                    tp_failed.setdefault(t, f"{rec['label']} timed out at {budget:g} ({rec['error']})")
            cells.append(rec)
            results[budget] = cells
            if args.out:  # after every cell: a run stopped early still leaves its table so far
                args.out.write_text(render(args, dense, results, speeds))
        results[budget] = cells
        if args.rounds and not args.render:
            speeds[budget] = speed(args, budget, cells, dense_folder)
        elif (args.work / f"speed-{budget:g}.json").is_file():  # --render: the speeds measured before
            speeds[budget] = json.loads((args.work / f"speed-{budget:g}.json").read_text())
        if args.out:
            args.out.write_text(render(args, dense, results, speeds))
    print(render(args, dense, results, speeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
