"""Candidate Filtering time: synprune's CF (fast) against the naive CF (a full forward pass for every ablation
and every walk step, nothing reused), side by side in one process, on the same calibration batches.

For each sparsity a fresh calibration context is built (nothing carried over from another sparsity, as in a
single `synprune prune --cf`), the method's order is computed, and CF runs twice each way, in the order naive,
fast, fast, naive, each run on a fresh calibration context (a machine whose speed drifts evenly over the four
moves both ways' means alike). Prints the mean wall and CPU times (CPU time is steadier on a shared machine),
each run's wall time, their ratios, the passes and layer runs each way made (load-independent counts), and
whether both ways made the same decisions (same selection, same log, metrics equal to float tolerance, in all
four runs). What the fast path does: it re-runs only the layers from an ablation's layer up, on cached hidden
states of the accepted removals, and never scores a removed set twice (a walk step whose earlier steps were
all put back is the head's single score).

    python benchmarks/cf_speed.py [--task stsb] [--model DIR] [--sparsities 0.5,0.75] [--calib-size 512] [--out FILE]
    python benchmarks/cf_speed.py --sweep sap,fisher --sparsities 0.25,0.5,0.75 --calib-size 48

`--sweep METHODS` times the CF runs of a sweep instead (each method x sparsity, as `synprune sweep --methods
sap+cf,fisher+cf` makes them, one after the other in one process on one calibration context): naive, each
run on its own; fast, as the sweep does (heads scored alone once for every run, walks sharing what another
run already scored); same decisions for every run.

`--task sst2` without `--model` uses the cached SST-2 task model (`synprune finetune --task sst2` builds it).

The floor of an exact CF (single runs): a trial's metric needs the model's output under its own removed set.
A layer's input depends only on the heads removed below it, so a trial may take its input to layer j from any
set scored before it (the dense model, a head alone, an earlier walk step) that removes the same heads below
j, and must run every layer from the highest such j up, on every token the output reads (all of them for a
mean-pooled embedding; one per example in a classifier's last layer, whose keys and values still need every
token). "min layer runs" counts those layers (any earlier set's hidden states kept, however much memory that
takes); "products floor s" is the time of their matrix products alone: the feed-forward up and down
projections, and above the trial's first layer the query/key/value/output projections of the heads it keeps,
timed on the calibration batches' real tokens (no padding) and summed over the trials. naive s / floor s
("exact bound") bounds the speedup of any exact CF on this run, even one whose activations, layer norms and
attention cost nothing.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="stsb")
    p.add_argument("--model", default=None, help="model folder (default: bundled MiniLM for stsb, else the cached task model)")
    p.add_argument("--glue-dir", default=None)
    p.add_argument("--method", default="sap", help="method whose order feeds CF")
    p.add_argument("--sparsities", default="0.5,0.75")
    p.add_argument("--calib-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    p.add_argument("--tolerance", type=float, default=0.95)
    p.add_argument("--out", type=Path, default=None, help="append one markdown table row per sparsity here")
    p.add_argument("--sweep", default=None, help="comma-separated methods: time all their CF runs together")
    return p.parse_args(argv)


HEADER = ("| model | task | calib | order | sparsity | pool | tried | naive passes | fast passes | naive s | fast s "
          "| wall speedup | CPU speedup | layer-run ratio | same decisions | max metric diff | min layer runs ratio "
          "| products floor s | exact bound |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def _model(args):
    from synprune.errors import SynpruneError
    from synprune.train.finetune import RECORD_FILE, cached_model_dir

    if args.model or args.task == "stsb":
        return args.model
    folder = cached_model_dir(args.task, glue_dir=args.glue_dir)
    if not (folder / RECORD_FILE).is_file():
        raise SynpruneError(f"no cached {args.task} task model; build it with `synprune finetune --task {args.task}`")
    return str(folder)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from synprune.cf import filter as cf
    from synprune.calibrate.context import Calibration
    from synprune.config import PruneConfig
    from synprune.evaluation.evaluate import task_metrics
    from synprune.io import atomic_write_text
    from synprune.model.load import load_model
    from synprune.methods import score
    from synprune.progress import set_quiet
    from synprune.selection.select import n_to_prune
    from synprune.data.tasks import load_task, make_split

    torch.set_num_threads(args.threads)
    set_quiet(True)
    tm = load_model(_model(args))
    data = load_task(args.task, args.glue_dir)
    scorers = []

    class Counting(cf.AblationScorer):  # keeps each scorer to read its pass and layer counts afterwards
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            scorers.append(self)

    cf.AblationScorer = Counting
    if args.sweep:
        return _sweep(args, tm, data, scorers)
    for sparsity in [float(s) for s in args.sparsities.split(",")]:
        cfg = PruneConfig(method=args.method, sparsity=sparsity, calib_size=args.calib_size,
                          batch_size=args.batch_size, tolerance=args.tolerance, cf=True).validate()
        examples, metrics = make_split(data, cfg.calib_size, cfg.seed).calibration, task_metrics(tm, data)
        ctx = Calibration(tm, examples, cfg, metrics)
        order = score(ctx, cfg).order
        n = n_to_prune(cfg.sparsity, tm.n_heads)

        def run(fast: bool) -> tuple:
            context = Calibration(tm, examples, cfg, metrics)  # fresh: nothing scored yet
            context.prepared  # tokenize before timing
            t0, c0 = time.perf_counter(), time.process_time()
            selection, log = cf.candidate_filter(context, order, n, cfg, fast=fast)
            return time.perf_counter() - t0, time.process_time() - c0, selection, log, scorers[-1], context

        # naive, fast, floor, fast, naive: a machine that speeds up or slows down evenly over the run moves
        # every way's mean alike
        first = {False: run(False), True: run(True)}
        _, _, sel_f, log_f, sc_f, ctx_f = first[True]
        _, _, sel_p, log_p, sc_p, _ = first[False]
        runs_min, floor = exact_floor(ctx_f, log_f, sc_p.layer_runs // (sc_p.passes * tm.grid[0]))
        second = {True: run(True), False: run(False)}
        mean = lambda fast, i: (first[fast][i] + second[fast][i]) / 2
        t_fast, c_fast, t_plain, c_plain = mean(True, 0), mean(True, 1), mean(False, 0), mean(False, 1)
        same, diffs = _same(sel_f, log_f, sel_p, log_p)
        same = same and all(_same(*second[fast][2:4], sel_p, log_p)[0] for fast in (True, False))
        summary = cf.summarize(log_f)
        pool_layers = [sum(1 for e in log_f if e["stage"] == "single" and e["layer"] == l) for l in range(tm.grid[0])]
        print(f"model {tm.name}, {data.name} calibration {len(ctx.examples)} examples, batch {cfg.batch_size}, "
              f"{args.threads} thread(s), order: {cfg.method}, sparsity {cfg.sparsity} ({n} heads), "
              f"pool {summary['pool']} (per layer {pool_layers}), walk tried {summary['tried']} "
              f"(removed {summary['removed']}), fill {summary['fill']}")
        print(f"  naive {t_plain:8.1f} s wall, {c_plain:8.1f} s CPU  ({sc_p.passes} passes, {sc_p.layer_runs} layer runs; "
              f"the two runs {first[False][0]:.1f} / {second[False][0]:.1f} s)")
        print(f"  fast  {t_fast:8.1f} s wall, {c_fast:8.1f} s CPU  ({sc_f.passes} passes, {sc_f.layer_runs} layer runs; "
              f"the two runs {first[True][0]:.1f} / {second[True][0]:.1f} s)")
        print(f"  speedup {t_plain / t_fast:.2f}x wall, {c_plain / c_fast:.2f}x CPU (layer runs "
              f"{sc_p.layer_runs / sc_f.layer_runs:.2f}x); same decisions: {same} (max metric difference "
              f"{max(diffs, default=0.0):.2e})", flush=True)
        print(f"  exact floor: {runs_min} layer runs at best ({sc_p.layer_runs / runs_min:.2f}x fewer than naive; "
              f"at the fast path's own cost per layer run, {t_fast * runs_min / sc_f.layer_runs:.1f} s, "
              f"{t_plain * sc_f.layer_runs / (t_fast * runs_min):.2f}x, by arithmetic); their matrix products alone "
              f"take {floor:.1f} s, so no exact CF, however fast its other operations, beats naive by more than "
              f"{t_plain / floor:.2f}x here", flush=True)
        if args.out:
            row = (f"| {tm.name} | {data.name} | {len(ctx.examples)} | {cfg.method} | {cfg.sparsity} | {summary['pool']} | "
                   f"{summary['tried']} | {sc_p.passes} | {sc_f.passes} | {t_plain:.1f} | {t_fast:.1f} | "
                   f"{t_plain / t_fast:.2f}x | {c_plain / c_fast:.2f}x | {sc_p.layer_runs / sc_f.layer_runs:.2f}x | "
                   f"{same} | {max(diffs, default=0.0):.1e} | {sc_p.layer_runs / runs_min:.2f}x | {floor:.1f} | "
                   f"{t_plain / floor:.2f}x |\n")
            old = args.out.read_text() if args.out.exists() else HEADER
            atomic_write_text(args.out, old + row)


def exact_floor(ctx, log: list[dict], calls: int, repeats: int = 3) -> tuple[int, float]:
    """(layer runs, seconds) that any exact CF must spend on the trials of `log` (see the module's docstring).

    A trial runs its layers from the highest layer below which some earlier scored set removes the same heads.
    Counted as time: in each of those layers the feed-forward up and down projections (no activation), and
    above its first layer the query, key, value and output projections of the heads the trial keeps there (in
    its first layer they are cached); all on the calibration batches' real tokens (no padding), except in a
    classifier's last layer, where only the keys and values are needed for every token (the head reads one
    token per example). Layer norms, the attention itself and the activation are left out, so the true floor is
    higher."""
    import torch
    import torch.nn.functional as F

    from synprune.arch import attention_handles, ffn_handles, in_dim

    tm = ctx.tm
    n_layers, n_heads = tm.grid
    masks = call_masks(ctx.prepared)
    if len(masks) != calls:
        raise RuntimeError(f"the calibration batches make {len(masks)} model calls, the CF passes {calls}")
    d = tm.model.config.hidden_size
    xs = [torch.randn(int(m.sum()), d) for m in masks]  # the real tokens of each call, no padding
    firsts = [torch.randn(m.shape[0], d) for m in masks]  # one token per example
    attn = {h.layer: h for h in attention_handles(tm.model)}
    ffns = ffn_handles(tm.model)

    def timed(products, tokens=xs) -> float:
        best = float("inf")
        with torch.no_grad():
            for _ in range(repeats):
                t = time.perf_counter()
                for x in tokens:
                    products(x)
                best = min(best, time.perf_counter() - t)
        return best

    def ffn(layer: int) -> float:
        f = ffns[layer]
        one = tm.kind == "classifier" and layer == n_layers - 1  # its output is read at one token per example
        up = (lambda x: f.up[0](x)) if len(f.up) == 1 else (lambda x: torch.cat([u(x) for u in f.up], -1))
        return timed(lambda x: f.down(up(x)[..., :in_dim(f.down)]), firsts if one else xs)

    def projections(layer: int, kept: int) -> float:
        a = attn.get(layer)
        if a is None or a.fused or a.n_kv != a.n_heads or kept == 0:
            return 0.0  # fused or grouped projections: not counted (the floor only gets lower)
        rows = kept * a.head_dim
        q, k, v, o = (m.weight for m in (a.q, a.k, a.v, a.out_proj))
        if tm.kind == "classifier" and layer == n_layers - 1:
            return timed(lambda x: (F.linear(x, k[:rows]), F.linear(x, v[:rows])))
        return timed(lambda x: (F.linear(F.linear(x, q[:rows]), o[:, :rows]), F.linear(x, k[:rows]), F.linear(x, v[:rows])))

    ffn_s = [ffn(j) for j in range(n_layers)]
    proj_s = [[projections(j, kept) for kept in range(n_heads + 1)] for j in range(n_layers)]
    prefix = lambda heads, j: frozenset(h for h in heads if h[0] < j)
    seen, state, runs, total = [frozenset()], frozenset(), 0, 0.0
    for e in log:
        if e["metric"] is None:
            continue
        removed = frozenset(tuple(h) for h in e["heads"]) | (state if e["stage"] == "walk" else frozenset())
        start = max(max(j for j in range(n_layers + 1) if prefix(s, j) == prefix(removed, j)) for s in seen)
        runs += calls * (n_layers - start)
        total += sum(ffn_s[start:]) + sum(proj_s[j][n_heads - sum(1 for l, _ in removed if l == j)]
                                          for j in range(start + 1, n_layers))
        seen.append(removed)
        if e["stage"] == "walk" and e["removed"]:
            state = removed
    return runs, total


def call_masks(prepared) -> list:
    """The attention mask of each model call a pass over `prepared` makes, in order."""
    if prepared.sentences is not None:
        return [b.inputs["attention_mask"] for b in prepared.sentences]
    return [b_inputs["attention_mask"] for b in prepared.batches for b_inputs in (b.inputs, b.inputs_b) if b_inputs is not None]


def _same(sel_f, log_f, sel_p, log_p) -> tuple[bool, list[float]]:
    """Whether two CF runs made the same decisions (selection, log, metrics to 1e-6), and their metric differences."""
    strip = lambda log: [{k: v for k, v in e.items() if k not in ("metric", "floor", "dense")} for e in log]
    diffs = [abs(a["metric"] - b["metric"]) for a, b in zip(log_f, log_p) if a["metric"] is not None and b["metric"] is not None]
    same = (sel_f == sel_p and strip(log_f) == strip(log_p) and len(log_f) == len(log_p)
            and all((a["metric"] is None) == (b["metric"] is None) for a, b in zip(log_f, log_p))
            and max(diffs, default=0.0) <= 1e-6)
    return same, diffs


def _sweep(args, tm, data, scorers) -> None:
    """Every CF run of `--sweep` methods x `--sparsities`, naive (each alone) then fast (sharing, as a sweep)."""
    from synprune.cf import filter as cf
    from synprune.calibrate.context import Calibration
    from synprune.config import PruneConfig
    from synprune.evaluation.evaluate import task_metrics
    from synprune.io import atomic_write_text
    from synprune.methods import score
    from synprune.selection.select import n_to_prune
    from synprune.data.tasks import make_split

    methods, sparsities = args.sweep.split(","), [float(s) for s in args.sparsities.split(",")]
    base = PruneConfig(calib_size=args.calib_size, batch_size=args.batch_size, tolerance=args.tolerance, cf=True).validate()
    metrics = task_metrics(tm, data)
    examples = make_split(data, base.calib_size, base.seed).calibration
    scoring = Calibration(tm, examples, base, metrics)  # the orders (not timed)
    runs = [(m, s, base.replace(method=m, sparsity=s).validate()) for m in methods for s in sparsities]
    orders = {(m, s): score(scoring, c).order for m, s, c in runs}
    out = {}
    for fast in (False, True):
        ctx = Calibration(tm, examples, base, metrics)  # fresh: nothing scored yet
        ctx.prepared  # tokenize before timing
        first = len(scorers)
        t0, c0 = time.perf_counter(), time.process_time()
        chosen = {(m, s): cf.candidate_filter(ctx, orders[(m, s)], n_to_prune(s, tm.n_heads), c, fast=fast) for m, s, c in runs}
        out[fast] = (time.perf_counter() - t0, time.process_time() - c0, chosen, scorers[first:])
    (t_p, c_p, naive, sc_p), (t_f, c_f, fast, sc_f) = out[False], out[True]
    checks = [_same(*fast[k], *naive[k]) for k in naive]
    same = all(ok for ok, _ in checks)
    diff = max((max(d, default=0.0) for _, d in checks), default=0.0)
    passes = lambda sc: (sum(x.passes for x in sc), sum(x.layer_runs for x in sc))
    (pp, lp), (pf, lf) = passes(sc_p), passes(sc_f)
    line = (f"model {tm.name}, {data.name} calibration {len(examples)} examples, batch {base.batch_size}, {args.threads} "
            f"thread(s); the CF runs of a sweep: {', '.join(m + '+cf' for m in methods)} at {args.sparsities} ({len(runs)} runs)\n"
            f"  naive {t_p:8.1f} s wall, {c_p:8.1f} s CPU  ({pp} passes, {lp} layer runs)\n"
            f"  fast  {t_f:8.1f} s wall, {c_f:8.1f} s CPU  ({pf} passes, {lf} layer runs)\n"
            f"  speedup {t_p / t_f:.2f}x wall, {c_p / c_f:.2f}x CPU (layer runs {lp / lf:.2f}x); same decisions in every run: "
            f"{same} (max metric difference {diff:.2e})")
    print(line, flush=True)
    if args.out:
        old = args.out.read_text() if args.out.exists() else ""
        atomic_write_text(args.out, old + line + "\n")


if __name__ == "__main__":
    main()
