"""Does SAP respond to syntactic alignment when everything else is fixed? (the SAP paper's third open check)

Chosen heads of a real model get synthetic attention (`synprune.calibrate.controlled`): each word's row attends to its
syntactic head with probability p, otherwise it follows the head's own map (or the previous token with
--otherwise previous). Weights, inputs, calibration sample and parses stay fixed. For each p the harness
scores every method on the manipulated model and reports, for the chosen heads: SAP's penalty (split into
misses of top-k arcs and over-attention to the other arcs), the threshold tau, the mean dep->head attention
on top-k arcs (the manipulation check), and where each method's order puts them (0 = pruned first, 1 =
pruned last) and how many of them it prunes at --sparsity. SAP's mechanism predicts that the penalty falls
and the heads move towards the kept end as p rises; the verdict line says whether it does.

    python benchmarks/controlled_attention.py --out runs/controlled            # bundled MiniLM, STS-B
    python benchmarks/controlled_attention.py --relations top-k --out runs/controlled_topk   # only SAP's top-k relations
    python benchmarks/controlled_attention.py --heads random:6 --otherwise previous --out runs/controlled_prev
"""
from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from synprune.calibrate.context import Calibration
from synprune.config import PruneConfig
from synprune.calibrate.controlled import OTHERWISE, controlled_attention, syntactic_targets
from synprune.errors import SynpruneError
from synprune.evaluation.evaluate import task_metrics
from synprune.io import atomic_write_json, atomic_write_text, write_png
from synprune.methods import HeadScores, get_method
from synprune.methods.sap import Penalty
from synprune.model.load import as_task_model
from synprune.selection.select import n_to_prune
from synprune.data.tasks import load_task, make_split

Head = tuple[int, int]
DEFAULT_METHODS = ("sap", "entropy", "confidence", "magnitude", "fisher")


def choose_heads(spec: str, grid: tuple[int, int], sap_order: Sequence[Head], seed: int) -> list[Head]:
    """`sap-top:N` (SAP's N most prunable heads of the unmanipulated model), `random:N`, or `L:H,L:H,...`."""
    kind, _, n = spec.partition(":")
    if kind in ("sap-top", "random"):
        if not n.isdigit() or not 0 < int(n) <= grid[0] * grid[1]:
            raise SynpruneError(f"--heads {spec}: give a head count between 1 and {grid[0] * grid[1]}, e.g. {kind}:6")
        if kind == "sap-top":
            return list(sap_order[: int(n)])
        every = [(l, h) for l in range(grid[0]) for h in range(grid[1])]
        return sorted(random.Random(seed).sample(every, int(n)))
    heads = []
    for part in filter(None, spec.split(",")):
        l, _, h = part.partition(":")
        if not (l.isdigit() and h.isdigit()) or int(l) >= grid[0] or int(h) >= grid[1]:
            raise SynpruneError(f"--heads {part!r}: write LAYER:HEAD within {grid[0]} layers x {grid[1]} heads, 0-indexed")
        heads.append((int(l), int(h)))
    if not heads:
        raise SynpruneError("--heads is empty; use sap-top:N, random:N or LAYER:HEAD,...")
    return heads


def placement(scores: HeadScores, heads: Sequence[Head], n_pruned: int) -> dict:
    """Where an order puts the chosen heads: position / (heads - 1) (0 = pruned first) and how many are pruned."""
    pos = {h: i for i, h in enumerate(scores.order)}
    last = max(len(scores.order) - 1, 1)
    return {"score": float(np.mean([scores.scores[h] for h in heads])),
            "position": float(np.mean([pos[h] for h in heads]) / last),
            "pruned": int(sum(pos[h] < n_pruned for h in heads))}


def sap_parts(ctx: Calibration, cfg: PruneConfig) -> dict:
    """SAP's penalty split into misses of top-k arcs and over-attention to the other arcs, per head, and the
    mean dep->head attention on top-k arcs (in SAP's direction)."""
    ranking = ctx.dependency_ranking(cfg.k, cfg.keep_punct)
    tau = ctx.threshold(cfg.threshold, cfg.keep_punct)
    only = [replace(ranking, weights=tuple(w if ranking.is_top(i) == top else 0 for i, w in enumerate(ranking.weights)))
            for top in (True, False)]
    top, rare = ctx.run_scan([Penalty(tau, r, cfg.direction) for r in only], keep_punct=cfg.keep_punct,
                             description="SAP penalty parts", ranking=ranking)
    return {"top_misses": top.penalty.numpy(), "rare_over": rare.penalty.numpy(), "tau": float(tau.mean()),
            "top_attention": (top.top_sum / max(top.top_count, 1)).numpy(), "n_arcs": top.n_arcs}


def measure(tm, examples, cfg: PruneConfig, metric_names, heads: Sequence[Head], ps: Sequence[float],
            methods: Sequence[str], otherwise: str, sparsity: float, parses, relations: str = "all") -> list[dict]:
    """One row per p: each method's placement of the chosen heads and SAP's parts, on the manipulated model.
    `relations`: `all` (every word attends to its head), `top-k` (only words whose relation is one of SAP's
    top-k labels) or a comma-separated list of labels."""
    base = Calibration(tm, examples, cfg, metric_names, parses=parses)
    if relations == "all":
        chosen_relations = None
    elif relations == "top-k":
        chosen_relations = set(base.dependency_ranking(cfg.k, cfg.keep_punct).labels[: cfg.k])
    else:
        chosen_relations = set(filter(None, relations.split(",")))
    targets = syntactic_targets(tm.tokenizer, base.items, cfg.max_length, cfg.seed, chosen_relations)
    n = n_to_prune(sparsity, tm.n_heads)
    rows = []
    for p in ps:
        ctx = Calibration(tm, examples, cfg, metric_names, parses=parses)
        t0 = time.perf_counter()
        with controlled_attention(tm.model, targets, heads, p, otherwise) as state:
            scores = {m: get_method(m)(ctx, cfg.replace(method=m)) for m in methods}
            parts = sap_parts(ctx, cfg)
        if state.calls == 0 and heads:
            raise SynpruneError(f"{tm.name}: the model never dispatched attention through transformers' attention "
                                "interface, so its heads could not be controlled")
        sel = tuple(zip(*heads))
        rows.append({
            "p": p, "seconds": round(time.perf_counter() - t0, 1),
            "methods": {m: placement(s, heads, n) for m, s in scores.items()},
            "sap_per_head": scores["sap"].scores[sel].tolist() if "sap" in scores else None,
            "top_misses": float(parts["top_misses"][sel].mean()), "rare_over": float(parts["rare_over"][sel].mean()),
            "top_attention": float(parts["top_attention"][sel].mean()), "tau": parts["tau"],
            "other_top_attention": float(np.delete(parts["top_attention"].ravel(),
                                                   [l * tm.grid[1] + h for l, h in heads]).mean()),
            "scores": {m: np.asarray(s.scores).tolist() for m, s in scores.items()},
        })
    return rows


def monotone(values: Sequence[float], falling: bool = True) -> bool:
    pairs = list(zip(values, values[1:]))
    return all(b <= a for a, b in pairs) if falling else all(b >= a for a, b in pairs)


def verdict(rows: list[dict]) -> dict:
    """Does SAP's penalty of the chosen heads fall with p, per head and on average, and do they move to the kept end?"""
    if rows[0]["sap_per_head"] is None:
        return {}
    per_head = np.array([r["sap_per_head"] for r in rows])  # (ps, heads)
    mean = per_head.mean(1)
    position = [r["methods"]["sap"]["position"] for r in rows]
    return {"mean_falls": bool(monotone(list(mean)) and mean[-1] < mean[0]),
            "heads_falling": int(sum(monotone(list(c)) and c[-1] < c[0] for c in per_head.T)),
            "heads": per_head.shape[1], "position_rises": bool(monotone(position, falling=False) and position[-1] > position[0]),
            "penalty_change": float(mean[-1] - mean[0]), "position_change": float(position[-1] - position[0])}


def markdown(rows: list[dict], methods: Sequence[str], meta: dict, v: dict) -> str:
    lines = [f"Chosen heads ({len(meta['heads'])}): {', '.join(f'{l}:{h}' for l, h in meta['heads'])}; "
             f"relations made syntactic: {meta.get('relations', 'all')}; otherwise: {meta['otherwise']}; {meta['model']} on {meta['task']}, {meta['calib_size']} calibration examples; "
             f"position 0 = pruned first, 1 = pruned last; pruned = of the chosen heads, how many the method prunes at "
             f"sparsity {meta['sparsity']:g}.", "",
             "| p | dep->head attention, top-k arcs (chosen / other heads) | tau | SAP penalty (mean) | = top-k misses | + rare over-attention | "
             + " | ".join(f"{m} position (pruned)" for m in methods) + " |",
             "|---:|---:|---:|---:|---:|---:|" + "---:|" * len(methods)]
    for r in rows:
        cells = [f"{r['methods'][m]['position']:.2f} ({r['methods'][m]['pruned']})" for m in methods]
        lines.append(f"| {r['p']:g} | {r['top_attention']:.3f} / {r['other_top_attention']:.3f} | {r['tau']:.4f} | "
                     f"{r['top_misses'] + r['rare_over']:.0f} | {r['top_misses']:.0f} | {r['rare_over']:.0f} | " + " | ".join(cells) + " |")
    if v:
        lines += ["", f"Verdict: SAP's mean penalty of the chosen heads {'falls' if v['mean_falls'] else 'does NOT fall'} "
                  f"monotonically as p rises ({v['penalty_change']:+.0f} from the first p to the last); "
                  f"{v['heads_falling']} of {v['heads']} heads fall monotonically; their position in SAP's order "
                  f"{'rises' if v['position_rises'] else 'does NOT rise'} (monotonically and overall) ({v['position_change']:+.2f})."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], methods: Sequence[str], path: Path, title: str) -> Path:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = [r["p"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ps, [r["top_misses"] + r["rare_over"] for r in rows], "o-", color="black", label="SAP penalty")
    a.plot(ps, [r["top_misses"] for r in rows], "s--", label="top-k misses")
    a.plot(ps, [r["rare_over"] for r in rows], "^--", label="rare over-attention")
    a.set_xlabel("p (probability a word attends to its syntactic head)")
    a.set_ylabel("mean over the chosen heads")
    a.set_title("SAP's penalty of the controlled heads")
    a.legend(fontsize=8)
    for m in methods:
        b.plot(ps, [r["methods"][m]["position"] for r in rows], "o-", label=m)
    b.set_ylim(-0.02, 1.02)
    b.set_xlabel("p")
    b.set_ylabel("mean position in the order (0 = pruned first)")
    b.set_title("Where each method ranks the controlled heads")
    b.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return write_png(path, fig, tight=False)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the bundled MiniLM)")
    ap.add_argument("--task", default="stsb")
    ap.add_argument("--glue-dir", default=None)
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heads", default="sap-top:6", help="sap-top:N, random:N or LAYER:HEAD,...")
    ap.add_argument("--ps", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--otherwise", default="original", choices=OTHERWISE)
    ap.add_argument("--relations", default="all", help="all, top-k (SAP's top-k labels only) or LABEL,LABEL,...")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=Path("runs/controlled"))
    ap.add_argument("--plot", type=Path, default=None, help="also write the plot here (e.g. docs/img/controlled_attention.png)")
    args = ap.parse_args(argv)
    ps = sorted(float(p) for p in args.ps.split(","))
    methods = [m for m in args.methods.split(",") if m]
    t0 = time.perf_counter()
    cfg = PruneConfig(calib_size=args.calib_size, seed=args.seed).validate()
    tm = as_task_model(args.model)
    data = load_task(args.task, args.glue_dir)
    metric_names = task_metrics(tm, data)
    examples = make_split(data, cfg.calib_size, cfg.seed).calibration
    base = Calibration(tm, examples, cfg, metric_names)
    parses = base.parses
    heads = choose_heads(args.heads, tm.grid, get_method("sap")(base, cfg).order if args.heads.startswith("sap-top") else [],
                         args.seed)
    rows = measure(tm, examples, cfg, metric_names, heads, ps, methods, args.otherwise, args.sparsity, parses, args.relations)
    v = verdict(rows)
    meta = {"model": tm.name, "task": data.name, "calib_size": len(examples), "heads": heads, "otherwise": args.otherwise, "relations": args.relations,
            "sparsity": args.sparsity, "ps": ps, "methods": methods, "seconds": round(time.perf_counter() - t0, 1),
            "command": "python benchmarks/controlled_attention.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    text = markdown(rows, methods, meta, v)
    atomic_write_text(args.out / "table.md", text)
    atomic_write_json(args.out / "results.json", {"meta": meta, "verdict": v, "rows": rows})
    title = (f"{tm.name} / {data.name}: heads {', '.join(f'{l}:{h}' for l, h in heads)} "
             f"(relations: {args.relations}; otherwise: {args.otherwise})")
    for target in filter(None, (args.out / "controlled_attention.png", args.plot)):
        plot(rows, methods, target, title)
    print(text)
    print(f"{meta['seconds']:.0f} s; wrote {args.out / 'table.md'}, results.json and the plot")
    return {"meta": meta, "verdict": v, "rows": rows}


if __name__ == "__main__":
    main()
