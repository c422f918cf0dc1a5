"""`sweep()`: compare methods under one protocol (SPEC section 5): one model, one calibration sample, one
evaluation split, one seed, many methods x budgets (x seeds for random methods, x option grids).

A single `Calibration` context serves every run, so parses, attention statistics, gradients, each method's
scores, the dense evaluation and the tokenized evaluation batches are computed once; a run only selects
heads and evaluates the pruned model. The plan is checked whole before any model or data is loaded.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import itertools
import json
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from synprune.config import PruneConfig, coerce_option
from synprune.errors import SynpruneError
from synprune.io import atomic_write_json, atomic_write_text
from synprune.methods import SCANS, available, uses
from synprune.progress import bar, log
from synprune.data.tasks import ALIASES, GLUE, TaskData

if TYPE_CHECKING:  # torch-heavy; imported when a sweep runs, so the command line starts fast
    from synprune.run.result import PruneResult

DEFAULT_METHODS = ("sap", "sap+cf", "sapx", "random", "magnitude", "entropy", "confidence", "michel", "fisher", "fisher+cf")
DEFAULT_SPARSITIES = (0.25, 0.5, 0.75)
DEFAULT_SEEDS = (0, 1, 2)
CF_SUFFIX = "+cf"
# Options that change every method's selection, and those that change only Candidate Filtering's; a method's
# own scoring options come from its registration (`methods.uses`).
SELECTION_OPTIONS = frozenset({"layer_fraction", "units", "neuron_score", "rearrange", "repair", "layout"})
CF_OPTIONS = frozenset({"pool_ratio", "tolerance", "tolerance_abs"})
# Fixed for a whole sweep: the axes of the sweep itself, and what defines its calibration context.
NOT_GRIDDABLE = {"method": "--methods", "cf": "--methods NAME+cf", "sparsity": "--sparsities", "seed": "--seeds",
                 "budget": "--sparsities", "calib_size": "a separate sweep", "eval_size": "a separate sweep", "max_length": "a separate sweep",
                 "batch_size": "a separate sweep", "parser": "a separate sweep"}
PER_RUN = ("method", "cf", "sparsity")  # set by each run, so not part of the sweep-wide options
RESULT_COLUMNS = ("method", "cf", "sparsity", "seed", "metric_name", "dense", "pruned", "n_pruned", "seconds")


@dataclass(frozen=True)
class MethodSpec:
    """A method as named on the command line: `name` or `name+cf` (its ranking filtered by CF)."""

    name: str
    cf: bool = False

    @property
    def label(self) -> str:
        return self.name + (CF_SUFFIX if self.cf else "")

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        text = text.strip()
        if text.endswith(CF_SUFFIX):
            return cls(text[: -len(CF_SUFFIX)], True)
        return cls(text)

    def depends_on(self) -> frozenset[str]:
        """Options that change this spec's result besides sparsity and the calibration data."""
        return uses(self.name) | SELECTION_OPTIONS | (CF_OPTIONS if self.cf else frozenset())


@dataclass(frozen=True)
class Run:
    """One cell of the sweep: a method spec at one sparsity, seed and combination of grid values."""

    spec: MethodSpec
    sparsity: float
    seed: int
    variant: tuple[tuple[str, Any], ...] = ()

    @property
    def variant_label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.variant)

    @property
    def name(self) -> str:
        """Folder under DIR/runs: <method>_s<sparsity>_seed<seed>[_<key>=<value>...]."""
        name = f"{self.spec.label}_s{self.sparsity:g}_seed{self.seed}" + "".join(f"_{k}={v}" for k, v in self.variant)
        return re.sub(r"[^A-Za-z0-9._=+-]", "-", name)

    def config(self, base: PruneConfig) -> PruneConfig:
        return base.replace(method=self.spec.name, cf=self.spec.cf, sparsity=self.sparsity, seed=self.seed,
                            **dict(self.variant))


@dataclass
class Plan:
    specs: list[MethodSpec]
    sparsities: list[float]
    seeds: list[int]
    grid: dict[str, list]
    base: PruneConfig
    runs: list[Run]

    def to_json(self) -> dict:
        return {"methods": [s.label for s in self.specs], "sparsities": self.sparsities, "seeds": self.seeds,
                "seeded_methods": [s.label for s in self.specs if "seed" in s.depends_on()],
                "grid": self.grid, "runs": len(self.runs),
                "config": {k: v for k, v in self.base.to_json().items() if k not in PER_RUN}}


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep's runs: how many of them had finished (their folders are complete and a rerun into
    the same folder reads them back) and where."""

    def __init__(self, finished: int, total: int, out: Path | None):
        super().__init__(f"{finished} of {total} runs finished")
        self.finished, self.total, self.out = finished, total, out


@dataclass
class SweepResult:
    """What a sweep produced: one row and one result per run, and where it all was written."""

    plan: Plan
    rows: list[dict]
    results: dict[str, PruneResult]
    summary: dict
    out: Path | None
    files: dict[str, Path] = field(default_factory=dict)
    breakdown: str = ""  # where the time went, stage by stage (the command prints it at the end)


def parse_grid(items: Iterable[str]) -> dict[str, list]:
    """`key=v1,v2,...` strings (the repeatable --grid option) as {key: [typed values]}."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise SynpruneError(f"--grid {item!r}: write it as KEY=V1,V2,... (e.g. --grid k=3,5,7)")
        if key in grid:
            raise SynpruneError(f"--grid {key} is given twice; list all its values in one --grid {key}=...")
        grid[key] = [v for v in values.split(",") if v.strip()]
    return grid


def _check_grid(grid: Mapping[str, Sequence], specs: Sequence[MethodSpec]) -> dict[str, list]:
    names = {f.name for f in fields(PruneConfig)}
    checked: dict[str, list] = {}
    for key, values in grid.items():
        if key in NOT_GRIDDABLE:
            raise SynpruneError(f"--grid {key}: {key} is fixed for a sweep; use {NOT_GRIDDABLE[key]}")
        if key not in names:
            options = sorted(names - set(NOT_GRIDDABLE))
            raise SynpruneError(f"--grid {key}: not an option; grid one of {', '.join(options)}")
        typed = [coerce_option(key, v) for v in values]
        if not typed or len(set(map(repr, typed))) != len(typed):
            raise SynpruneError(f"--grid {key}: give distinct values, e.g. --grid {key}=V1,V2")
        if not any(key in s.depends_on() for s in specs):
            users = [m for m in available() if key in uses(m)] or ["none of the registered methods"]
            raise SynpruneError(f"--grid {key}: no requested method depends on {key} (methods that do: {', '.join(users)})")
        checked[key] = typed
    return checked


def _check_cf(specs: Sequence[MethodSpec]) -> None:
    if any(s.cf for s in specs) and importlib.util.find_spec("synprune.cf.filter") is None:
        cf = ", ".join(s.label for s in specs if s.cf)
        raise SynpruneError(f"{cf}: Candidate Filtering (synprune.cf.filter) is not installed here; drop the +cf methods")


def plan_sweep(methods: Sequence[str], sparsities: Sequence[float], seeds: Sequence[int],
               grid: Mapping[str, Sequence] | None, base: PruneConfig) -> Plan:
    """Every run of the sweep, checked (methods, grid, each run's options) before any work is done."""
    specs = list(dict.fromkeys(MethodSpec.parse(m) for m in methods if m.strip()))
    if not specs:
        raise SynpruneError("--methods is empty; name at least one method, e.g. --methods sap,random")
    known = set(available())
    unknown = [s.label for s in specs if s.name not in known]
    if unknown:
        raise SynpruneError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(sorted(known))} "
                            f"(each also as NAME{CF_SUFFIX})")
    _check_cf(specs)
    sparsities = sorted(set(float(s) for s in sparsities))
    seeds = list(dict.fromkeys(int(s) for s in seeds)) or [base.seed]
    if not sparsities:
        raise SynpruneError("--sparsities is empty; give at least one, e.g. --sparsities 0.25,0.5")
    grid = _check_grid(grid or {}, specs)
    runs: list[Run] = []
    for spec in specs:
        deps = spec.depends_on()
        keys = [k for k in grid if k in deps]
        spec_seeds = seeds if "seed" in deps else [base.seed]
        for values in itertools.product(*(grid[k] for k in keys)):
            variant = tuple(zip(keys, values))
            runs += [Run(spec, s, seed, variant) for seed in spec_seeds for s in sparsities]
    for run in runs:
        run.config(base).validate()
    return Plan(specs, sparsities, seeds, grid, base, runs)


def _is_other_glue_task(task: str | TaskData) -> bool:
    name = task.name if isinstance(task, TaskData) else ALIASES.get(task.lower(), task.lower())
    return name in GLUE and name != "stsb"


def task_model_for(task: str, glue_dir: str | Path | None) -> Path:
    """The fine-tuned classifier for a GLUE task (built and cached by `synprune.train.finetune`)."""
    try:
        from synprune.train.finetune import task_model
    except ModuleNotFoundError as e:
        if e.name != "synprune.train.finetune":
            raise
        raise SynpruneError(f"the bundled MiniLM is a sentence-embedding model and fine-tuning is not installed here: "
                            f"pass --model a classifier fine-tuned on {task}") from None
    return task_model(task, glue_dir=glue_dir)


def _row(run: Run, result: PruneResult, seconds: float, grid_keys: Sequence[str]) -> dict:
    m = result.metric
    row = {"method": run.spec.name, "cf": run.spec.cf, "sparsity": run.sparsity, "seed": run.seed,
           "metric_name": m["name"], "dense": m["dense"], "pruned": m["pruned"], "n_pruned": len(result.pruned_heads),
           "seconds": round(seconds, 3)}
    if grid_keys:
        values = dict(run.variant)
        row["variant"] = run.variant_label
        row.update({k: values.get(k, "") for k in grid_keys})
    row["run"] = f"runs/{run.name}"
    return row


def _same_inputs(recorded: Mapping, model: Mapping, task: Mapping) -> list[str]:
    """What differs between a finished run's record and this sweep's model and data (empty: the same)."""
    diffs = []
    rm = recorded.get("model") or {}
    keys = ("weights_sha256", "model_type", "layers", "heads_per_layer") + (() if model.get("weights_sha256") else ("name",))
    if any(rm.get(k) != model.get(k) for k in keys):
        diffs.append("model")
    rt = recorded.get("task") or {}
    if any(rt.get(k) != task.get(k) for k in ("name", "data_sha256", "label_map")):
        diffs.append("data")
    return diffs


def finished_runs(out_dir: Path, plan: Plan, model: Mapping, task: Mapping, overwrite: bool) -> dict[str, Path]:
    """The planned runs already finished in `out_dir` with this sweep's configuration, model and data (to reuse).

    A run folder holding a result of other options, model or data is an error unless `overwrite` (then it is
    recomputed); so is a non-empty `out_dir` that is not a sweep's folder. All checked before any work."""
    from synprune.io import refuse_to_replace

    if not (out_dir / "runs").is_dir() and not (out_dir / "results.json").is_file():
        refuse_to_replace(out_dir, overwrite, "--out")
    done: dict[str, Path] = {}
    for run in plan.runs:
        folder = out_dir / "runs" / run.name
        try:
            recorded = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not finished (interrupted before its result.json was written): recomputed
        wanted = run.config(plan.base).to_json()
        config = recorded.get("config") or {}
        diffs = sorted(k for k in set(wanted) | set(config) if wanted.get(k) != config.get(k))
        diffs += _same_inputs(recorded, model, task)
        if not diffs:
            done[run.name] = folder
        elif not overwrite:
            raise SynpruneError(f"{folder} holds a run with other {', '.join(diffs)}; use another --out for this "
                                "sweep, or add --overwrite to recompute it")
    return done


def rows_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else list(RESULT_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def sweep(model: Any = None, tokenizer: Any = None, task: str | TaskData = "stsb", *,
          methods: Sequence[str] = DEFAULT_METHODS, sparsities: Sequence[float] = DEFAULT_SPARSITIES,
          seeds: Sequence[int] = DEFAULT_SEEDS, grid: Mapping[str, Sequence] | None = None,
          out: str | Path | None = "runs/sweep", config: PruneConfig | None = None, glue_dir: str | Path | None = None,
          text_col: str | None = None, text_pair_col: str | None = None, label_col: str | None = None,
          report: bool = True, overwrite: bool = False, executor: Any = None, **options) -> SweepResult:
    """Run every method x sparsity (x seed for seeded methods, x grid values for the methods they affect)
    on one calibration context; with `out`, write results.csv/json, runs/*/result.json, plots and report.html.

    `options` are PruneConfig fields shared by all runs (calib_size, seed, k, ...); `seed` is the base seed
    (calibration sample and deterministic methods); `seeds` are used by methods that depend on the seed.

    Rerun into the same `out` (e.g. after an interruption), runs already finished there with the same options,
    model and data are read back, not recomputed; a run folder of other options is refused unless `overwrite`.

    `executor` ("inline", "ray", "ray:ADDRESS", or an `executors.Executor`) computes each run as a job of its
    own instead of in this machine's two-process pool (the default), e.g. spread over a Ray cluster.
    """
    from synprune.calibrate.context import open_context
    from synprune.run.executors import check_executor, run_on, run_specs
    from synprune.run.prune import refuse_cf_without_labels, task_record
    from synprune.run.result import PruneResult

    base = (config or PruneConfig()).replace(**options).validate()
    executor = check_executor(executor)
    plan = plan_sweep(methods, sparsities, seeds, grid, base)
    if model is None and tokenizer is None and _is_other_glue_task(task):
        model = task_model_for(task.name if isinstance(task, TaskData) else task, glue_dir)
    opened = open_context(model, task, base, tokenizer=tokenizer, glue_dir=glue_dir, text_col=text_col,
                          text_pair_col=text_pair_col, label_col=label_col,
                          check=lambda data: refuse_cf_without_labels(data, any(s.cf for s in plan.specs)))
    tm, data, metric_names, split, ctx = opened.tm, opened.data, opened.metric_names, opened.split, opened.ctx
    for spec in plan.specs:  # what several methods' scans can share is collected in one pass
        ctx.planned_scans.update(SCANS.get(spec.name, {}))
    out_dir = Path(out) if out is not None else None
    done = finished_runs(out_dir, plan, tm.describe(), task_record(data, metric_names), overwrite) if out_dir else {}
    rows: list[dict] = []
    results: dict[str, PruneResult] = {}
    t0 = time.perf_counter()
    log(f"sweep: {len(plan.runs)} runs ({', '.join(s.label for s in plan.specs)}) on {tm.name} / {data.name}"
        + (f"; read back {len(done)} finished runs from {out_dir}, {len(plan.runs) - len(done)} remain" if done else ""))
    try:
        if executor is None:
            worker, timeline = _run_all(ctx, plan, base, data, split, out_dir, done, results)
        else:  # one job per run, e.g. on a Ray cluster
            columns = {"glue_dir": glue_dir, "text_col": text_col, "text_pair_col": text_pair_col, "label_col": label_col}
            described, recorded = tm.describe(), task_record(data, metric_names)
            run_on(executor, run_specs(plan.runs, base, model, task, columns), out_dir, done,
                   lambda result: _same_inputs(result, described, recorded), results)
            worker, timeline = {}, []
    except KeyboardInterrupt:
        raise SweepInterrupted(len(results), len(plan.runs), out_dir) from None
    for r in plan.runs:
        res = results[r.name]
        rows.append(_row(r, res, float(res.details.get("run_seconds", 0.0)), list(plan.grid)))
    last = results[plan.runs[-1].name]  # its split and parse provenance cover all the shared work
    parse_info = ctx.parse_info or last.details.get("parse_cache", {})
    total = time.perf_counter() - t0
    summary = {
        "sweep": plan.to_json(), "model": tm.describe(), "task": last.task, "split": last.split,
        "metric": {k: last.metric[k] for k in ("name", "split", "dense")},
        "versions": last.versions, "parse_cache": parse_info, "reused_runs": sorted(done),
        "timings": {"shared_stages": dict(ctx.timings), "total": round(total, 3)},
        "rows": rows,
    }
    result = SweepResult(plan, rows, results, summary, out_dir)
    stages = dict(ctx.timings)
    if worker:
        summary["timings"]["evaluation_worker_busy"] = round(sum(worker.values()), 3)
        summary["timings"]["worker_stages"] = {k: round(v, 3) for k, v in worker.items()}
        summary["timings"]["jobs"] = timeline
    if out_dir is not None:
        t = time.perf_counter()
        result.files["results.csv"] = atomic_write_text(out_dir / "results.csv", rows_csv(rows))
        result.files["results.json"] = atomic_write_json(out_dir / "results.json", summary)
        if report:
            from synprune.report import write_report

            result.files.update(write_report(out_dir))
        stages["write results and report"] = time.perf_counter() - t
    result.breakdown = stage_breakdown(stages, total + stages.get("write results and report", 0.0))
    if worker:
        result.breakdown += (f"\n  (besides: the worker process alongside, {sum(worker.values()):.1f} s: "
                             + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(worker.items(), key=lambda kv: -kv[1])) + ")")
    return result


def _run_all(ctx, plan: Plan, base: PruneConfig, data: TaskData, split, out_dir: Path | None,
             done: Mapping[str, Path], results: dict[str, "PruneResult"]) -> tuple[dict[str, float], list[dict]]:
    """Every run's result into `results` (those in `done` read back from their folders). Heads are chosen for
    every run first, runs without CF first; the evaluations and the Candidate Filtering walks are jobs that a
    worker process and this one take in turn (`evalpool`): heads are scored alone while the methods score, each
    CF walk starts once its pool's heads are all scored, the longest first, and a run's result is written as soon
    as its evaluation is in. Returns the worker's busy seconds per stage and the jobs' timeline (`evalpool`)."""
    import torch

    from synprune.cf.filter import pool_size, walk_key
    from synprune.evaluation.evalcache import lookup
    from synprune.run.evalpool import Evaluations, worker_possible
    from synprune.run.prune import assemble, choose_heads, dense_scores, evaluate_chosen, evaluation_inputs, plain_cf, score, walked
    from synprune.run.result import PruneResult
    from synprune.selection.select import n_to_prune

    for name, folder in done.items():
        results[name] = PruneResult.read(folder)
    todo = [r for r in plan.runs if r.name not in done]
    if not todo:
        return {}, []
    prepared = evaluation_inputs(ctx, split)
    configs = {r.name: r.config(base).resolved() for r in todo}
    walks = [r for r in todo if plain_cf(configs[r.name])]  # CF runs whose walk either process can make
    log(expected_time(ctx.tm, prepared, list(configs.values()), len(split.calibration), worker_possible(ctx.tm)))
    chosen: dict[str, tuple[Any, float]] = {}
    threads = torch.get_num_threads()
    with Evaluations(ctx.tm, prepared, split.evaluation, ctx.metric_names, max(base.batch_size, 64),
                     base.max_length, calibration=(split.calibration, base) if walks else None,
                     cf_context=ctx if walks else None, timed=ctx.timed) as evals:
        ctx.pace = evals.pace  # CF calls it between passes
        n_heads = ctx.tm.n_heads
        every_head = any(pool_size(configs[r.name], n_heads) == n_heads for r in walks)
        if every_head:  # every head alone is needed: scored while the methods score
            _score_alone(evals, ctx.tm.grid, [(l, h) for l in range(ctx.tm.grid[0]) for h in range(ctx.tm.grid[1])],
                         configs[walks[0].name])
        dense_known = lookup(ctx.tm, prepared, ctx.metric_names) is not None  # cached on disk by an earlier command
        if not dense_known:
            evals.submit([], first=True)  # before any other job: no result is written without it

        def finish(r: Run, wait: bool) -> bool:
            c, seconds = chosen[r.name]
            if c.heads_only and not (wait or (evals.ready(c.selection.pruned) and (dense_known or evals.ready([])))):
                return False
            dense = dense_scores(ctx, split, lambda: evals.result([]))
            with ctx.timed("evaluate_pruned"):
                pruned = evals.result(c.selection.pruned) if c.heads_only else evaluate_chosen(ctx, prepared, c)
            res = assemble(ctx, c, data, split, dense, pruned)
            res.details["run_seconds"] = round(seconds + evals.seconds(c.selection.pruned), 3)
            if out_dir is not None:
                res.write(out_dir / "runs" / r.name)
            results[r.name] = res
            del chosen[r.name]
            return True

        try:
            with bar("sweep runs", len(todo)) as advance:
                def write_ready() -> None:  # the runs whose evaluation is in
                    for other in [o for o in todo if o.name in chosen]:
                        if finish(other, wait=False):
                            advance(True)

                for r in sorted([r for r in todo if r not in walks], key=lambda r: r.spec.cf):
                    ctx.pace()
                    t = time.perf_counter()
                    c = choose_heads(ctx, configs[r.name])
                    if c.heads_only:
                        evals.submit(c.selection.pruned)
                    chosen[r.name] = (c, time.perf_counter() - t)
                    write_ready()
                scored = {}  # CF runs: name -> (scores, seconds spent scoring)
                for r in walks:
                    t = time.perf_counter()
                    scored[r.name] = (score(ctx, configs[r.name]), time.perf_counter() - t)
                pools = {r.name: [(int(l), int(h)) for l, h in scored[r.name][0].order][:pool_size(configs[r.name], n_heads)]
                         for r in walks}
                if walks and not every_head:
                    _score_alone(evals, ctx.tm.grid, sorted({h for p in pools.values() for h in p}), configs[walks[0].name])
                pending = {r.name: n_to_prune(configs[r.name].sparsity, n_heads) for r in walks}  # walks not yet queued
                jobs: dict[str, Any] = {}
                first: dict[tuple, Any] = {}  # walk key -> the job that makes that walk first
                while pending or jobs or chosen:
                    for name, n in list(pending.items()):
                        order = scored[name][0].order
                        key = walk_key(ctx, order, n, configs[name])
                        if key is not None:  # its pool is scored alone: longest walks first
                            jobs[name] = evals.cf("walk", (order, n, configs[name]), (1, -n), first.get(key))
                            first.setdefault(key, jobs[name])
                            del pending[name]
                    for name, job in list(jobs.items()):
                        if job.done:
                            selection, cf_log = job.out
                            scores, seconds = scored[name]
                            chosen[name] = (walked(ctx, configs[name], scores, selection, cf_log), seconds + job.seconds)
                            evals.submit(selection.pruned)
                            del jobs[name]
                    write_ready()
                    if (pending or jobs or chosen) and not evals.steal():
                        evals.wait()
        finally:
            torch.set_num_threads(threads)
            ctx.pace = lambda: None
        return dict(evals.worker_stages), evals.timeline


# Expected time: (evaluations x one dense pass + CF passes x CF_PASS_SHARE x a pass over the calibration sample)
# / processes x ETA_FACTOR, the dense pass timed here on one thread (each of the two processes runs one). Both
# constants fit the default sweep's recorded stage times (benchmarks/results/sweep_time.txt, 441 s: 37
# evaluations took 335 s and 216 CF passes 506 s, single-threaded, in both processes; parsing, scans and gradients
# add about 8%). The range printed is ETA_RANGE around it: another machine, other load, other models and tasks.
ETA_FACTOR = 1.05
ETA_RANGE = (0.75, 1.4)
CF_PASS_SHARE = 0.75  # a CF pass runs the calibration sample from the tried head's layer up (cached below it)


def dense_pass_seconds(tm, prepared: Mapping) -> float:
    """Seconds one dense pass over the evaluation inputs takes here on one thread, from one timed forward of a
    middle-sized batch scaled by the token count of all of them (the faster of two timings: the first warms up)."""
    import torch

    batches = [(b.inputs, n) for p in prepared.values() for b in (p.sentences or p.batches)
               for n in [1 + (b.inputs_b is not None) + len(b.choices or ())]]
    if not batches:
        return 0.0
    tokens = [inputs["input_ids"].numel() * n for inputs, n in batches]
    sample, _ = sorted(batches, key=lambda bn: bn[0]["input_ids"].numel())[len(batches) // 2]
    device = next(tm.model.parameters()).device
    sample = {k: v.to(device) for k, v in sample.items()}
    seconds, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for _ in range(2):
                t = time.perf_counter()
                tm.model(**sample)
                seconds.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return min(seconds) * sum(tokens) / sample["input_ids"].numel()


def expected_time(tm, prepared: Mapping, configs: Sequence[PruneConfig], calib_size: int, parallel: bool) -> str:
    """One line: the sweep's expected time, from the work it has planned (one evaluation per run and the dense
    one; with CF, the largest pool's heads alone, and for each method one walk trial per head of its largest pool:
    its walks at other budgets repeat the same first trials, which are made once) and a timed dense pass."""
    from synprune.cf.filter import pool_size

    n_heads = tm.n_heads
    evaluations = len(configs) + 1
    pools: dict[str, int] = {}
    for c in configs:
        if c.cf:
            pools[c.method] = max(pools.get(c.method, 0), pool_size(c, n_heads))
    cf_passes = (max(pools.values()) + sum(pools.values())) if pools else 0
    dense = dense_pass_seconds(tm, prepared)
    n_eval = sum(p.n for p in prepared.values()) or 1
    work = evaluations * dense + cf_passes * CF_PASS_SHARE * dense * calib_size / n_eval
    central = ETA_FACTOR * work / (2 if parallel else 1)
    low, high = (central * f for f in ETA_RANGE)
    return (f"sweep: expected {_minutes(low)} to {_minutes(high)} ({evaluations} evaluations"
            + (f" and about {cf_passes} Candidate Filtering passes" if cf_passes else "")
            + f"; one dense evaluation pass takes {dense:.1f} s on one thread here, "
            + ("two processes share the work" if parallel else "one process does the work")
            + "; the time scales with this machine's speed, free cores and load)")


def _minutes(seconds: float) -> str:
    return f"{max(seconds, 1):.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _score_alone(evals, grid: tuple[int, int], heads: Sequence[tuple[int, int]], cfg: PruneConfig) -> None:
    """CF jobs scoring `heads` alone, one per layer, lowest (costliest: a pass from its layer up) first."""
    for layer in sorted({l for l, _ in heads}):
        evals.cf("alone", ([h for h in heads if h[0] == layer], cfg), (0, layer))


def stage_breakdown(stages: Mapping[str, float], total: float) -> str:
    """One line per stage (largest first) with its share of `total`; what no stage timed is `other`."""
    parts = sorted(stages.items(), key=lambda kv: -kv[1])
    parts.append(("other", max(0.0, total - sum(stages.values()))))
    width = max(len(name) for name, _ in parts)
    lines = [f"  {name:<{width}} {sec:8.1f} s  {100 * sec / max(total, 1e-9):5.1f}%" for name, sec in parts]
    return "\n".join([f"sweep stages ({total:.1f} s in all):", *lines])
