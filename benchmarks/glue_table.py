"""The project's answer to the SAP paper's GLUE table: every method of the comparison sweep on the four
fine-tuned MiniLM task models (SST-2, CoLA, MRPC, STS-B), at 0.25, 0.5 and 0.75 sparsity.

    python benchmarks/glue_table.py [--tasks sst2,cola,mrpc,stsb] [--out runs/glue] [--methods ...]

Each task is one `synprune sweep` (one calibration context: 512 seeded train examples; evaluation: all of dev)
on the cached task model (`synprune finetune --task T` builds it first if missing, which takes 10-30 minutes
on 2 cores). A task whose sweep already finished with the same plan is read back, not rerun, so an
interrupted run can simply be started again. Prints the table (task x method x sparsity, dense first) and
writes it to OUT/table.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from synprune.io import atomic_write_text
from synprune.report.table import summarize
from synprune.run.sweep import DEFAULT_METHODS, DEFAULT_SEEDS, DEFAULT_SPARSITIES, sweep, task_model_for

TASKS = ("sst2", "cola", "mrpc", "stsb")


def run_task(task: str, out: Path, methods: list[str], sparsities: list[float], seeds: list[int]) -> dict:
    done = out / "results.json"
    if done.is_file():
        summary = json.loads(done.read_text())
        plan = summary["sweep"]
        if plan["methods"] == methods and plan["sparsities"] == sparsities and plan["seeds"] == seeds:
            print(f"{task}: read back {done}")
            return summary
    model = task_model_for(task, None)
    t0 = time.perf_counter()
    result = sweep(model, task=task, methods=methods, sparsities=sparsities, seeds=seeds, out=out)
    print(f"{task}: {len(result.rows)} runs in {time.perf_counter() - t0:.0f} s -> {out}")
    return result.summary


def markdown(summaries: dict[str, dict]) -> str:
    first = next(iter(summaries.values()))
    sparsities = sorted({float(r["sparsity"]) for r in first["rows"]})
    lines = ["| task (metric, dev) | method | dense | " + " | ".join(f"s={s:g}" for s in sparsities) + " |",
             "|---|---|---:|" + "---:|" * len(sparsities)]
    for task, summary in summaries.items():
        table = summarize(summary["rows"])
        for i, (label, cells) in enumerate(table.rows):
            texts = ["-" if c is None else (f"{c.mean:.2f} ± {c.sd:.2f}" if c.sd is not None else f"{c.mean:.2f}") for c in cells]
            texts = [f"**{t}**" if c is not None and c.best else t for t, c in zip(texts, cells)]
            name = f"{task} ({table.metric})" if i == 0 else ""
            dense = f"{table.dense:.2f}" if i == 0 else ""
            lines.append(f"| {name} | {label} | {dense} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--sparsities", default=",".join(f"{s:g}" for s in DEFAULT_SPARSITIES))
    ap.add_argument("--seeds", default=",".join(str(s) for s in DEFAULT_SEEDS))
    ap.add_argument("--out", type=Path, default=Path("runs/glue"))
    args = ap.parse_args()
    methods = args.methods.split(",")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    summaries = {t: run_task(t, args.out / t, methods, sparsities, seeds) for t in args.tasks.split(",")}
    text = markdown(summaries)
    atomic_write_text(args.out / "table.md", text)
    print(text)
    print(f"wrote {args.out / 'table.md'}; random is mean ± sd over seeds {args.seeds}; best pruned per task and column in bold")


if __name__ == "__main__":
    main()
