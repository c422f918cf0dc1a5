"""The price of uniformity: `--layout uniform` (every layer keeps the same heads, key/value groups and neurons: a
standard checkpoint) against `--layout adaptive` (per-layer sizes) at the same budgets, quality and measured
speed side by side.

- decoder: SmolLM2-135M-Instruct (`smollm2`) on UD English EWT (perplexity), params:0.9/0.8/0.7;
- encoders, flops:0.6/0.5/0.4: the four GLUE task models (`sst2`, `cola`, `mrpc`, `stsb`: the bundled
  all-MiniLM-L6-v2 fine-tuned by `synprune finetune`, scripts/build-task-models.sh; scored on all of the task's
  dev set with its metric, 512 calibration examples, as `synprune prune` does by default) and the bundled
  MiniLM itself zero-shot on STS-B (`minilm`: Spearman of cosine similarities). On a BERT config uniform means
  "all heads, the same neurons in every layer" (its head size is hidden / heads), so a budget the attention
  alone exceeds has no uniform layout (shown as such).
Method: `kwon` (Fisher scores of heads and neurons, Kwon et al.'s search, rearrangement, least-squares repair),
the same calibration sample and scores for both layouts (one calibration context per model).

Two phases, so the timing runs alone:
    heavy python benchmarks/uniformity.py quality --work runs/uniformity [--models sst2,cola,mrpc,stsb,minilm]
    heavy --alone python benchmarks/uniformity.py speed --work runs/uniformity --out benchmarks/results/uniformity.md
`quality` exports every pruned model (checked against the masked model) to WORK/<model>/<budget>-<layout> and
writes WORK/quality.json; `speed` loads each export back (standard folders with plain from_pretrained, adaptive
ones with synprune.load_pruned), times forward passes interleaved (each round runs every model of a group once,
in a shuffled order; medians over rounds) and writes the table. A model with no rows in WORK/quality.json
keeps its section of the existing --out file as it was, marked as kept from the earlier run.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ENCODER = ["flops:0.6", "flops:0.5", "flops:0.4"]
CASES = {
    "smollm2": {"model": "smollm2", "task": "ewt", "budgets": ["params:0.9", "params:0.8", "params:0.7"],
                "calib": 16, "eval": 60, "batch": (4, 128)},
    # timed at the dev set's mean length in tokens, where the FLOPs budget is counted
    **{task: {"finetuned": True, "task": task, "budgets": ENCODER, "calib": 512, "eval": None, "batch": (32, length),
              "title": f"MiniLM fine-tuned on {task}"} for task, length in
       (("sst2", 25), ("cola", 12), ("mrpc", 53), ("stsb", 31))},
    "minilm": {"model": None, "task": "stsb", "budgets": ENCODER, "calib": 64, "eval": 500, "batch": (32, 32),
               "title": "the bundled MiniLM zero-shot on stsb"},
}
LAYOUTS = ("adaptive", "uniform")


def model_of(name: str):
    """What `load_model` takes for a case: a fine-tuned case's cached task model (built first if missing)."""
    if CASES[name].get("finetuned"):
        from synprune.run.sweep import task_model_for

        return task_model_for(CASES[name]["task"], None)
    return CASES[name]["model"]


def quality(work: Path, models: list[str]) -> None:
    from synprune.calibrate.context import Calibration
    from synprune.config import PruneConfig
    from synprune.data.tasks import load_task, make_split
    from synprune.errors import SynpruneError
    from synprune.evaluation.evaluate import task_metrics
    from synprune.export.checkpoint import export_pruned
    from synprune.model.load import load_model
    from synprune.calibrate.context import model_data
    from synprune.run.prune import dense_scores, run

    out_file = work / "quality.json"
    rows = json.loads(out_file.read_text()) if out_file.exists() else []
    for name in models:
        case = CASES[name]
        t0 = time.perf_counter()
        tm = load_model(model_of(name))
        data = model_data(tm, load_task(case["task"]))
        metrics = task_metrics(tm, data)
        base = PruneConfig(method="kwon", calib_size=case["calib"], eval_size=case["eval"], batch_size=8)
        split = make_split(data, base.calib_size, base.seed, base.eval_size)
        ctx = Calibration(tm, split.calibration, base, metrics)
        dense, _ = dense_scores(ctx, split)
        from synprune.arch import get_adapter

        full = get_adapter(tm.model).shape(tm.model).intermediate
        main_split = next(iter(split.evaluation))
        rows = [r for r in rows if r["model"] != name]
        dense_row = {"model": name, "budget": "dense", "layout": "-", "metric": metrics[0],
                     "value": dense[main_split][metrics[0]], "dir": None}
        rows.append(dense_row)
        for budget in case["budgets"]:
            for layout in LAYOUTS:
                cfg = base.replace(budget=budget, layout=layout)
                row = {"model": name, "budget": budget, "layout": layout, "metric": metrics[0]}
                try:
                    res = run(ctx, cfg.validate(), data, split)
                except SynpruneError as e:
                    rows.append({**row, "value": None, "note": str(e), "dir": None})
                    print(f"{name} {budget} {layout}: {e}", flush=True)
                    continue
                folder = work / name / f"{budget.replace(':', '')}-{layout}"
                export_pruned(tm.model, tm.tokenizer, res.pruned_heads, folder, overwrite=True,
                              neurons=res.pruned_neurons, repair=res.repair)
                info = json.loads((folder / "synprune_pruning.json").read_text())
                b = res.details["budget"]
                dense_row["parameters_dense"] = info["parameters"]["dense"]
                rows.append({**row, "value": res.metric["pruned"], "dir": str(folder), "standard": info["standard"],
                             "kept": b.get(f"{budget.split(':')[0]}_kept"), "heads_per_layer": info["heads_per_layer"],
                             "kv_groups_per_layer": info["kv_groups_per_layer"],
                             "neurons_per_layer": [len(n) if n is not None else full for n in info["kept_neurons"]],
                             "parameters": info["parameters"]})
                print(f"{name} {budget} {layout}: {metrics[0]} {res.metric['pruned']:.4g} (dense "
                      f"{res.metric['dense']:.4g}), standard={info['standard']}", flush=True)
                out_file.parent.mkdir(parents=True, exist_ok=True)
                out_file.write_text(json.dumps(rows, indent=1))
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    out_file.write_text(json.dumps(rows, indent=1))


def _load(row: dict, name: str):
    if row["dir"] is None:
        from synprune.model.load import load_model

        return load_model(model_of(name)).model
    info = json.loads((Path(row["dir"]) / "synprune_pruning.json").read_text())
    if info["standard"]:
        import transformers

        return getattr(transformers, info["auto_class"]).from_pretrained(row["dir"]).eval()
    from synprune.model.pruned import load_pruned

    return load_pruned(row["dir"])[0]


def speed(work: Path, out: Path, rounds: int, threads: int, note: str = "") -> None:
    torch.set_num_threads(threads)
    rows = json.loads((work / "quality.json").read_text())
    for name in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == name and (r["dir"] or r["budget"] == "dense")]
        models = [_load(r, name) for r in group]
        b, n = CASES[name]["batch"]
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(10, 1000, (b, n), generator=g)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        times: list[list[float]] = [[] for _ in models]
        with torch.inference_mode():
            for m in models:  # warm-up
                m(**inputs)
            order = list(range(len(models)))
            rng = random.Random(0)
            for _ in range(rounds):
                rng.shuffle(order)
                for i in order:
                    t = time.perf_counter()
                    models[i](**inputs)
                    times[i].append(time.perf_counter() - t)
        for r, t in zip(group, times):
            r["ms"] = 1000 * statistics.median(t)
        del models
    (work / "quality.json").write_text(json.dumps(rows, indent=1))
    out.write_text(render(rows, rounds, threads, out.read_text() if out.is_file() else "", note))
    print(out.read_text())


def _ms(ms: float | None) -> str:
    return f"{ms:.1f}" if ms else "-"


KEPT = ("_Kept as it was from the previous version of this file: this model was not rerun with the sections "
        "that were (its speed was timed in that run, in its own interleaved group)._")


def kept_sections(previous: str) -> dict[str, str]:
    """The model sections of an earlier table (`## NAME ...` to the next `## `), by model name."""
    return {sec.split(" ", 1)[0].rstrip(":"): "## " + sec.rstrip("\n") + "\n" for sec in previous.split("\n## ")[1:]}


def render(rows: list[dict], rounds: int, threads: int, previous: str = "", note: str = "") -> str:
    lines = ["# The price of uniformity: uniform vs adaptive layouts at the same budgets", "", *([note, ""] if note else []),
             "Method `kwon` (Fisher scores, Kwon et al.'s search and rearrangement, least-squares repair), one "
             "calibration sample and one set of scores per model for both layouts. Speed: the exported models "
             f"(standard folders loaded with plain `from_pretrained`, adaptive with `synprune.load_pruned`), float32 CPU, "
             f"{threads} threads, median of {rounds} interleaved rounds of one forward pass (`-`: not timed); `x dense` "
             "columns divide by the dense model's. `kept`: the budget's fraction (attention + feed-forward parameters, "
             "or MACs at the task's mean length) that the selection keeps; parameters: the whole exported model. "
             "On MiniLM (a BERT config: head size = hidden / heads) uniform keeps every head. The GLUE task models "
             "are the bundled MiniLM fine-tuned by `synprune finetune` (scripts/build-task-models.sh), scored on all "
             "of their task's dev set, 512 calibration examples. Generated by `benchmarks/uniformity.py` (commands "
             "in its docstring).", ""]
    kept = kept_sections(previous)
    for name, case in CASES.items():
        group = [r for r in rows if r["model"] == name]
        if not group:
            if name in kept:
                header, body = kept[name].split("\n", 1)
                lines += [header, "", KEPT, "", body.lstrip("\n").removeprefix(KEPT).lstrip("\n")]
            continue
        dense = next(r for r in group if r["budget"] == "dense")
        higher = dense["metric"] not in ("perplexity",)
        lines += [f"## {name}: {case.get('title', 'on ' + case['task'])} ({dense['metric']}, "
                  f"{'higher' if higher else 'lower'} is better; "
                  f"timing batch {case['batch'][0]} x {case['batch'][1]} tokens)", "",
                  "| budget | layout | kept | heads / layer | KV groups / layer | neurons / layer | parameters | "
                  f"{dense['metric']} | x dense | ms | speed x dense |", "|---|---|---|---|---|---|---|---|---|---|---|",
                  f"| dense | - | 1 | - | - | - | {dense.get('parameters_dense', 0) / 1e6:.1f} M | {dense['value']:.4g} | 1.00 | "
                  f"{_ms(dense.get('ms'))} | {'1.00' if dense.get('ms') else '-'} |"]
        for r in group:
            if r["budget"] == "dense":
                continue
            if r.get("value") is None:
                lines.append(f"| {r['budget']} | {r['layout']} | no uniform layout fits: {r.get('note', '')} |"
                             " | | | | | | | |")
                continue

            def spread(values):
                vals = [v for v in values if v is not None] or [0]
                return str(vals[0]) if len(set(vals)) == 1 else f"{min(vals)}-{max(vals)} (mean {statistics.fmean(vals):.1f})"

            ratio = r["value"] / dense["value"]
            ms = r.get("ms")
            speedup = f"{dense['ms'] / ms:.2f}" if ms and dense.get("ms") else "-"
            lines.append(f"| {r['budget']} | {r['layout']}{' (standard)' if r.get('standard') else ''} | {r['kept']:.3f} | "
                         f"{spread(r['heads_per_layer'])} | {spread(r['kv_groups_per_layer'])} | "
                         f"{spread([n for n in r['neurons_per_layer']])} | {r['parameters']['pruned'] / 1e6:.1f} M | "
                         f"{r['value']:.4g} | {ratio:.2f} | {_ms(ms)} | {speedup} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("phase", choices=["quality", "speed", "render"])
    p.add_argument("--work", type=Path, default=Path("runs/uniformity"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/uniformity.md"))
    p.add_argument("--models", default=",".join(CASES))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--note", default="", help="a line under the title (e.g. why a column is empty, or that the "
                   "timing ran under load)")
    a = p.parse_args(argv)
    if a.phase == "quality":
        quality(a.work, a.models.split(","))
    elif a.phase == "speed":
        speed(a.work, a.out, a.rounds, a.threads, a.note)
    else:  # the table from WORK/quality.json as it is (speed columns empty until `speed` ran)
        a.out.write_text(render(json.loads((a.work / "quality.json").read_text()), a.rounds, a.threads,
                                a.out.read_text() if a.out.is_file() else "", a.note))


if __name__ == "__main__":
    sys.exit(main())
