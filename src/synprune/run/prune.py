"""`prune()`: the SPEC pipeline end to end (parse -> align -> attention statistics -> score -> select ->
CF -> evaluate -> result). The command line is a thin layer over this function."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from synprune.arch import group_size, removed_kv_groups
from synprune.calibrate.context import Calibration, open_context
from synprune.config import PruneConfig
from synprune.errors import SynpruneError
from synprune.evaluation.evalcache import cached_dense
from synprune.evaluation.evaluate import Prepared, evaluate, prepare
from synprune.methods import HeadScores, get_method, score, unused_options
from synprune.model.load import TaskModel, as_task_model, max_positions
from synprune.progress import log
from synprune.run.result import PruneResult, versions
from synprune.selection.select import Selection, group_order, n_to_prune, select
from synprune.data.tasks import Split, TaskData


def refuse_unused_options(cfg: PruneConfig) -> None:
    """An option set away from its default that the method never reads would be recorded as if it mattered."""
    default = PruneConfig()
    ignored = [o for o in unused_options(cfg.method) if getattr(cfg, o) != getattr(default, o)]
    if ignored:
        flags = ", ".join(f"--{o.replace('_', '-')}" for o in ignored)
        raise SynpruneError(f"{flags} has no effect on method {cfg.method} (see `synprune methods`); drop it")


def refuse_cf_without_labels(data: TaskData, cf: bool) -> None:
    """Without labels a run is scored against the dense model (`fidelity`), but CF needs the task metric."""
    if cf and not data.can_evaluate:
        raise SynpruneError(f"task data {data.source} has no labels: Candidate Filtering checks candidates against "
                            "the task metric; drop --cf (or the +cf methods), or pass --label-col")


def refuse_windows_without_text(data: TaskData, cfg: PruneConfig) -> None:
    """--ppl-window / --eval-windows shape language modelling's token windows; on other tasks they do nothing."""
    default = PruneConfig()
    if not data.lm and (cfg.ppl_window != default.ppl_window or cfg.eval_windows != default.eval_windows):
        raise SynpruneError(f"--ppl-window and --eval-windows apply to language modelling (task ewt or a .txt file), "
                            f"not to task {data.name}; drop them")


def with_reference(tm: TaskModel, prepared: dict, metric_names) -> dict:
    """Label-free runs score against the dense model's outputs, computed here once, before any mask."""
    from synprune.evaluation.evaluate import dense_outputs
    from synprune.evaluation.fidelity import NAMES

    if set(metric_names) <= NAMES:
        for p in prepared.values():
            p.reference = dense_outputs(tm, p)
    return prepared


def task_record(data: TaskData, metric_names) -> dict:
    """What a result says about its data: provenance, metrics, the label map used and rows left out."""
    return {"name": data.name, "source": data.source, "data_sha256": data.hashes, "metrics": list(metric_names),
            "label_map": data.label_map, "rows_skipped": dict(data.skipped)}


def choose(ctx: Calibration, cfg: PruneConfig, scores: HeadScores) -> tuple[Selection, list[dict], PruneConfig, dict | None]:
    """Heads to prune: the top of the order, or CF's walk over a candidate pool. With a budget, also the
    config the selection ran with (its sparsity is the budget's head count) and what the selection keeps."""
    n_heads = ctx.tm.n_heads
    if cfg.layout == "uniform":
        return _choose_uniform(ctx, cfg, scores)
    if cfg.neurons:
        from synprune.selection.budget import budget_report
        from synprune.selection.units import select_units

        selection, info = select_units(ctx, cfg, scores, lambda n, neurons: _filter_under(ctx, cfg, scores, n, neurons))
        report = None
        if cfg.budget:
            seq_len = ctx.mean_length()
            report = budget_report(ctx.tm.model, selection.pruned, cfg.budget, seq_len, neurons=selection.neurons)
            if not report["met"]:
                raise SynpruneError(f"budget {cfg.budget}: the selection keeps {report} and cannot meet it; use a larger fraction")
        cf_log = info.pop("cf_log", [])
        return selection, cf_log, cfg.replace(sparsity=len(selection.pruned) / n_heads), {**(report or {}), "units": info}
    gs = group_size(ctx.tm.model) if cfg.units == "kv-groups" else 1
    if gs > 1:
        scores = replace(scores, order=group_order(scores.order, gs))
    if not cfg.budget:
        return (*_pick(ctx, cfg, scores, gs * n_to_prune(cfg.sparsity, n_heads // gs)), cfg, None)
    from synprune.selection.budget import budget_report, heads_for_budget

    seq_len = ctx.mean_length()
    n = heads_for_budget(ctx.tm.model, scores.order, cfg.budget, seq_len, layer_fraction=cfg.layer_fraction)
    n = -(-n // gs) * gs  # whole groups
    while True:  # the layer rule can make a selection of n heads keep more than the order's first n heads would
        used = cfg.replace(sparsity=n / n_heads)  # CF sizes its candidate pool from the sparsity
        selection, cf_log = _pick(ctx, used, scores, n)
        report = budget_report(ctx.tm.model, selection.pruned, cfg.budget, seq_len)
        if report["met"] or n >= n_heads:
            break
        n += gs
    if not report["met"]:
        raise SynpruneError(f"budget {cfg.budget}: the selection keeps {report} and cannot meet it; use a larger fraction")
    return selection, cf_log, used.replace(sparsity=len(selection.pruned) / n_heads), report


def _choose_uniform(ctx: Calibration, cfg: PruneConfig, scores: HeadScores) -> tuple[Selection, list[dict], PruneConfig, dict]:
    """`choose` under --layout uniform (synprune.selection.uniform)."""
    from synprune.selection.budget import budget_report
    from synprune.selection.uniform import select_uniform

    selection, info = select_uniform(ctx, cfg, scores)
    report: dict = {}
    if cfg.budget:
        seq_len = ctx.mean_length()
        report = budget_report(ctx.tm.model, selection.pruned, cfg.budget, seq_len,
                               neurons=selection.neurons if cfg.neurons else ())
        if not report["met"]:
            raise SynpruneError(f"budget {cfg.budget}: the uniform selection keeps {report} and cannot meet it; use a larger fraction")
    return selection, [], cfg.replace(sparsity=len(selection.pruned) / ctx.tm.n_heads), {**report, "units": info}


def _pick(ctx: Calibration, cfg: PruneConfig, scores: HeadScores, n: int) -> tuple[Selection, list[dict]]:
    if cfg.cf:
        from synprune.cf.filter import candidate_filter

        return candidate_filter(ctx, scores.order, n, cfg)
    return select(scores.order, ctx.tm.grid, n, cfg.layer_fraction), []


def _filter_under(ctx: Calibration, cfg: PruneConfig, scores: HeadScores, n: int, neurons: list) -> tuple[Selection, list[dict]]:
    """CF's walk over `n` heads with `neurons` pruned underneath (`--units heads,neurons`)."""
    from synprune.cf.filter import candidate_filter
    from synprune.repair import repaired

    with repaired(ctx.tm.model, (), neurons):
        return candidate_filter(ctx, scores.order, n, cfg.replace(sparsity=n / ctx.tm.n_heads), background=tuple(neurons))


def _n_neurons(tm: TaskModel) -> int:
    from synprune.model.masking import neuron_grid

    layers, per_layer = neuron_grid(tm.model)
    return layers * per_layer


def evaluate_heads(tm: TaskModel, prepared: dict, metric_names, pruned, neurons=None, repair=None) -> dict[str, dict[str, float]]:
    """Metrics per split with `pruned` heads (and `neurons`) masked, `repair` applied. Heads alone are scored on
    a copy of the model with them physically removed: the masked model's numbers (a removed head's slice only
    added zeros), at the pruned model's cost."""
    from synprune.devices import dispatched
    from synprune.repair import repaired

    if pruned and neurons is None and repair is None and not dispatched(tm.model):  # a device map's weights stay put
        from synprune.model.remove import without_heads

        small = replace(tm, model=without_heads(tm.model, pruned))
        return {split: evaluate(small, p, metric_names) for split, p in prepared.items()}
    with repaired(tm.model, pruned, neurons, repair):
        return {split: evaluate(tm, p, metric_names) for split, p in prepared.items()}


def prune(model: Any = None, tokenizer: Any = None, task: str | TaskData = "stsb", sparsity: float = 0.5, *,
          out: str | Path | None = None, config: PruneConfig | None = None, glue_dir: str | Path | None = None,
          text_col: str | None = None, text_pair_col: str | None = None, label_col: str | None = None,
          export: str | Path | None = None, onnx: bool = False, parses_file: str | Path | None = None,
          overwrite: bool = False, device_map: str | dict | None = None, max_memory: dict | None = None,
          gguf: str | Path | None = None, gguf_type: str = "f16", **options) -> PruneResult:
    """Prune `sparsity` of the heads of `model` on `task` with `config.method` (default SAP) and score it.
    `method=None` runs the recommended recipe for the model's kind and units (`synprune.run.recipes`), said in
    the log and in result.json (details.recipe).

    Returns the result; with `out`, also writes DIR/result.json atomically; with `export`, also writes the
    physically pruned model there (reload it with `synprune.load_pruned`); an existing non-empty `export`
    folder is replaced (atomically) only with `overwrite`. `device_map` ("auto", "balanced" or {module: device},
    "cpu" and "disk" included) and `max_memory` spread a model loaded by name over several devices
    (`synprune.devices`); the export is gathered on the CPU. With `gguf` (and `export`), a decoder pruned to the same sizes
    in every layer is also written as that GGUF file (type `gguf_type`). With `parses_file` (CoNLL-U),
    SAP calibrates on that file's sentences and gold trees instead of spaCy's parses of the task's train
    sample; evaluation stays on the task.
    """
    recipe = None
    if "method" in options and options["method"] is None:
        model, recipe, options = recommended_options(model, tokenizer, config, sparsity, options)
    cfg = (config or PruneConfig()).replace(sparsity=sparsity, **options).validate().resolved()
    get_method(cfg.method)  # unknown methods fail before any work
    refuse_unused_options(cfg)
    if onnx and export is None:
        raise SynpruneError("--onnx writes model.onnx into the exported folder; add --export DIR or drop --onnx")
    if gguf is not None and export is None:
        raise SynpruneError("--gguf writes the exported model; add --export DIR or drop --gguf")
    if export is not None:
        from synprune.io import refuse_to_replace

        refuse_to_replace(export, overwrite, "--export")

    def check(data: TaskData) -> None:
        if parses_file is not None and cfg.cf and not data.lm:
            raise SynpruneError("--parses gives unlabeled treebank sentences, but CF scores candidates on labeled data; drop --cf or --parses")
        refuse_cf_without_labels(data, cfg.cf)
        refuse_windows_without_text(data, cfg)

    opened = open_context(model, task, cfg, tokenizer=tokenizer, glue_dir=glue_dir, text_col=text_col,
                          text_pair_col=text_pair_col, label_col=label_col, parses_file=parses_file, check=check,
                          device_map=device_map, max_memory=max_memory)
    tm, data = opened.tm, opened.data
    if gguf is not None:
        from synprune.export.gguf import check_target

        check_target(tm.model, gguf, gguf_type, overwrite)  # before the work, not after it
    if recipe is not None:  # said once the inputs are checked: a refused run prints its one-line error alone
        log(recipe["said"])
    result = run(opened.ctx, cfg, data, opened.split)
    if recipe is not None:
        result.details["recipe"] = recipe
    if export is not None:
        from synprune.export.checkpoint import export_pruned

        export_pruned(tm.model, tm.tokenizer, result.pruned_heads, export, overwrite=overwrite, onnx=onnx,
                      neurons=result.pruned_neurons, repair=result.repair, gguf=gguf, gguf_type=gguf_type,
                      meta={"method": result.method, "cf": result.cf, "task": data.name, "sparsity": result.sparsity,
                            "metric": {k: result.metric[k] for k in ("name", "dense", "pruned")},
                            # a GGUF source: the GGUF export copies its tokenizer from that file
                            **({"source": {"path": tm.path, "hash": tm.weights_hash}}
                               if gguf is not None and str(tm.path).lower().endswith(".gguf") else {})})
    return result._written(out)  # last: a failed export leaves the previous output set as it was


def recommended_options(model: Any, tokenizer: Any, config: PruneConfig | None, sparsity: float,
                        options: dict) -> tuple[TaskModel, dict, dict]:
    """No method given: the model (loaded, to know its kind), what the recommended recipe is, and `options`
    with its method and options (`synprune.run.recipes`)."""
    from synprune.run.recipes import KIND_NAMES, recommended

    tm = as_task_model(model, tokenizer)
    options = {k: v for k, v in options.items() if k != "method"}
    base = (config or PruneConfig()).replace(sparsity=sparsity, **options)
    recipe = recommended(tm.kind, base.neurons)
    record = {"said": f"no --method: running the recommended recipe for {KIND_NAMES.get(tm.kind, tm.kind)}s with "
                      f"--units {base.units}: {recipe.command_line()} (synprune/run/recipes.py)",
              "recommended": True, "kind": tm.kind, "units": base.units, "spec": recipe.spec,
              "method": recipe.method, "options": dict(recipe.options)}
    return tm, record, recipe.apply(options)


def rows_cut(tm: TaskModel, split: Split, cfg: PruneConfig) -> dict[str, int]:
    """Evaluation rows longer than --max-length (the model reads their first tokens only), per split."""
    from synprune.data.truncation import cut_to_kept

    out = {}
    for name, ex in split.evaluation.items():
        cut = cut_to_kept(tm.tokenizer, [e.text_a for e in ex], [e.text_b for e in ex], cfg.max_length,
                          together=tm.kind != "embedding")
        out[name] = cut.rows_cut
        if cut.rows_cut:
            log(f"{cut.rows_cut} {name} rows are longer than --max-length {cfg.max_length}: scored on their first tokens")
    return out


def run_notes(cfg: PruneConfig, scores: HeadScores) -> list[str]:
    """What the run did differently from what was asked, said in the terminal and kept in result.json."""
    notes = []
    if scores.details.get("loss") == "output-fisher" and cfg.method != "output-fisher":
        notes.append(f"{cfg.method}: the calibration data has no labels, so the label-free output Fisher "
                     "replaced the task loss")
    for n in notes:
        log(f"note: {n}")
    return notes


@dataclass
class Chosen:
    """A run's heads (and neurons, and repair) before evaluation: the config they were chosen with (a budget
    sets its sparsity), the scores, the selection, CF's log, what a budget keeps and the run's notes."""

    cfg: PruneConfig
    scores: HeadScores
    selection: Selection
    cf_log: list[dict]
    budget: dict | None
    notes: list[str]
    repair: Any
    prune_seconds: float

    @property
    def neurons(self):
        return self.selection.neurons if self.cfg.neurons else None

    @property
    def heads_only(self) -> bool:
        """Only heads are masked: any copy of the model evaluates it the same (no neurons, no repair)."""
        return self.neurons is None and self.repair is None


def choose_heads(ctx: Calibration, cfg: PruneConfig) -> Chosen:
    """Score (memoized per context) and select, or run CF, and build the repair, for one method and budget."""
    import time

    tm = ctx.tm
    cfg = cfg.resolved()
    t0 = time.perf_counter()
    scores = score(ctx, cfg)
    notes = run_notes(cfg, scores)
    if cfg.method == "recon":
        from synprune.repair.refit import recon_run

        with ctx.timed("select"):
            selection, repair, cfg, budget = recon_run(ctx, cfg, scores, choose)
        return Chosen(cfg, scores, selection, [], budget, notes, repair, time.perf_counter() - t0)
    with ctx.timed("select" if not cfg.cf else "cf"):
        selection, cf_log, cfg, budget = choose(ctx, cfg, scores)
    repair = None
    if cfg.repair != "none":
        from synprune.model.activations import model_inputs
        from synprune.repair import make_repair, pooled_token

        with ctx.timed("repair"):
            repair = make_repair(cfg.repair, tm.model, list(model_inputs(tm, ctx.prepared.batches)), selection.pruned,
                                 selection.neurons if cfg.neurons else None, pooled_token(tm.kind))
    return Chosen(cfg, scores, selection, cf_log, budget, notes, repair, time.perf_counter() - t0)


def plain_cf(cfg: PruneConfig) -> bool:
    """A CF run over heads alone, without a budget or repair: its whole choice is one `cf.candidate_filter` walk
    over the method's order, which a sweep may make in either of its processes (`walked` builds its `Chosen`)."""
    return cfg.cf and not cfg.neurons and not cfg.budget and cfg.units == "heads" and cfg.repair == "none"


def walked(ctx: Calibration, cfg: PruneConfig, scores: HeadScores, selection: Selection, cf_log: list[dict],
           seconds: float = 0.0) -> Chosen:
    """What `choose_heads` returns for a `plain_cf` run whose walk gave `selection` and `cf_log`."""
    return Chosen(cfg, scores, selection, cf_log, None, run_notes(cfg, scores), None, seconds)


def windowing(tm: TaskModel, cfg: PruneConfig):
    """Language modelling's token windows (`window_perplexity`): --ppl-window tokens, or the model's limit if
    smaller; at most --eval-windows of them."""
    from synprune.evaluation.lm import Windowing, fit_window

    return Windowing(fit_window(cfg.ppl_window, max_positions(tm.model)), cfg.eval_windows)


def evaluation_inputs(ctx: Calibration, split: Split) -> dict[str, Prepared]:
    """The evaluation split(s) tokenized once per context (batches of at least 64; a causal LM's text also in
    token windows), with the dense model's outputs where the metrics score against them."""
    cfg = ctx.config
    windows = windowing(ctx.tm, cfg) if ctx.tm.kind == "lm" else None
    with ctx.timed("tokenize"):
        return ctx.memo("eval-prepared", lambda: with_reference(ctx.tm, {
            s: prepare(ctx.tm, ex, batch_size=max(cfg.batch_size, 64), max_length=cfg.max_length, windowing=windows)
            for s, ex in split.evaluation.items()}, ctx.metric_names))


def dense_scores(ctx: Calibration, split: Split, compute=None) -> tuple[dict, bool]:
    """The unpruned model's scores per split, once per context and cached on disk (`evalcache`); and whether
    they came from the disk cache. `compute` evaluates it where it is not cached (default: here)."""
    prepared = evaluation_inputs(ctx, split)
    compute = compute or (lambda: evaluate_heads(ctx.tm, prepared, ctx.metric_names, []))
    with ctx.timed("evaluate_dense"):
        return ctx.memo("dense", lambda: cached_dense(ctx.tm, prepared, ctx.metric_names, compute))


def evaluate_chosen(ctx: Calibration, prepared: dict, chosen: Chosen) -> dict:
    """The pruned model's scores; runs that mask the same heads (e.g. two methods' CF) share one evaluation."""
    if not chosen.heads_only:
        return evaluate_heads(ctx.tm, prepared, ctx.metric_names, chosen.selection.pruned, chosen.neurons, chosen.repair)
    return ctx.memo(("pruned", frozenset(chosen.selection.pruned)),
                    lambda: evaluate_heads(ctx.tm, prepared, ctx.metric_names, chosen.selection.pruned))


def run(ctx: Calibration, cfg: PruneConfig, data: TaskData, split: Split, out: str | Path | None = None) -> PruneResult:
    """Score, select (or CF), evaluate dense and pruned, and assemble the result for one method and budget."""
    chosen = choose_heads(ctx, cfg)
    prepared = evaluation_inputs(ctx, split)
    dense = dense_scores(ctx, split)
    with ctx.timed("evaluate_pruned"):
        pruned = evaluate_chosen(ctx, prepared, chosen)
    return assemble(ctx, chosen, data, split, dense, pruned, out)


def window_record(ctx: Calibration, split: Split) -> dict:
    """What a language-modelling result says about its two perplexities: each one's kind, the windows per split."""
    from synprune.evaluation.evaluate import n_windows
    from synprune.evaluation.lm import KINDS

    if not set(KINDS) & set(ctx.metric_names):
        return {}
    prepared = evaluation_inputs(ctx, split)
    windowing = next(iter(prepared.values())).windowing
    return {"perplexity_kinds": {k: v.replace("N tokens", f"{windowing.size} tokens") if windowing else v
                                 for k, v in KINDS.items() if k in ctx.metric_names},
            **({"windowing": windowing.to_json()} if windowing else {}),
            **{f"evaluation_{s}_windows": n_windows(p) for s, p in prepared.items() if p.windows is not None}}


def assemble(ctx: Calibration, chosen: Chosen, data: TaskData, split: Split, dense: tuple[dict, bool],
             pruned: dict, out: str | Path | None = None) -> PruneResult:
    """The result of one run from its chosen heads and its scores (dense, cached?; pruned), written to `out`."""
    tm, metric_names, cfg, selection, scores = ctx.tm, ctx.metric_names, chosen.cfg, chosen.selection, chosen.scores
    dense, dense_cached = dense
    repair, budget, notes = chosen.repair, chosen.budget, chosen.notes
    main_split, main_metric = next(iter(split.evaluation)), metric_names[0]
    return PruneResult(
        method=cfg.method, cf=cfg.cf, model=tm.describe(),
        task=task_record(data, metric_names),
        split={"calibration": len(split.calibration), **{f"evaluation_{s}": len(v) for s, v in split.evaluation.items()},
               "calibration_items": len(ctx.items) if "items" in ctx.__dict__ else None,
               "calibration_rows_cut": ctx.texts.rows_cut if "texts" in ctx.__dict__ else None,
               **{f"evaluation_{s}_rows_cut": n for s, n in ctx.memo("eval-rows-cut", lambda: rows_cut(tm, split, cfg)).items()},
               **window_record(ctx, split),
               "note": split.note},
        sparsity=cfg.sparsity, n_heads=tm.n_heads, pruned_heads=selection.pruned, removed_layers=selection.removed_layers,
        removed_kv_groups=removed_kv_groups(tm.model, selection.pruned),
        metric={"name": main_metric, "split": main_split, "dense": dense[main_split][main_metric],
                "pruned": pruned[main_split][main_metric], "all": {"dense": dense, "pruned": pruned}},
        head_scores=scores.scores, config=cfg.to_json(), seed=cfg.seed, timings=dict(ctx.timings),
        versions=versions(ctx.parse_info.get("parser")),
        details={**scores.details, "parse_cache": ctx.parse_info, "dense_cached": dense_cached,
                 **({"budget": budget} if budget else {}),
                 "options_not_used": unused_options(cfg.method), **({"notes": notes} if notes else {}),
                 "prune_seconds": chosen.prune_seconds, **({"repair": repair.summary()} if repair is not None else {})},
        cf_log=chosen.cf_log, pruned_neurons=selection.neurons, n_neurons=_n_neurons(tm) if cfg.neurons else 0, repair=repair,
    )._written(out)
