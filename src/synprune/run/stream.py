"""The layer-local recipe: prune a decoder one layer at a time (`synprune prune --stream`), from its files or
from a model in memory (`--layerwise`: the same recipe and the same functions on the model loaded whole, for
comparison).

For each layer i, with only layer i's weights in memory (float32; the checkpoint's own dtype on disk):
1. run the dense layer on the dense model's calibration hidden states (carried from layer i-1), reading its
   attention output projection's and down projection's inputs (scores, bias means) and outputs (ls targets);
2. score its heads and neurons (synprune.methods.layerlocal), select under the layer's share of the budget
   (synprune.selection.layerwise), slice them out (synprune.model.remove);
3. repair the sliced layer against the dense layer's outputs (synprune.repair.layerwise);
4. run the pruned layer on the pruned model's hidden states, and both layers on the evaluation texts;
5. write the pruned layer into the export (one safetensors shard per layer) and drop it.
Hidden states live in memory up to a bound and on disk beyond it (`States`). Perplexity of the dense and the
pruned model comes out of the same pass: the model's final norm and head read the carried states, the head one
range of vocabulary rows at a time (`_perplexities`), as the first layer's inputs come from the embedding rows
of the tokens used only; neither the embedding nor the head is ever whole in memory (`FileLayers`).

Which methods can stream, and why the others cannot: `STREAMABLE`, `REFUSED` (docs/big-models.md).
"""
from __future__ import annotations

import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synprune.arch import AttentionHandles, FFNHandles, get_adapter, removed_kv_groups, weight_rows
from synprune.config import PruneConfig
from synprune.model.load import max_positions
from synprune.errors import SynpruneError
from synprune.evaluation import lm as LM
from synprune.methods.layerlocal import HEAD_SCORES, NEURON_SCORES, PARTNER, Moments, head_scores, neuron_scores
from synprune.model.activations import StopForward, Tap
from synprune.model.layers import (FileLayers, LayerSource, ModelLayers, Pieces, call_layer, capture,
                                   final_logits, head_ranges, trim_memory)
from synprune.progress import log
from synprune.repair.layerwise import (LSMoments, add_bias, fit_scales, fold_scales, held_out, pruned_bias)
from synprune.repair.ls import LSOptions
from synprune.selection.budget import Budget, CostModel, budget_report, parse_budget
from synprune.selection.layerwise import select_layer

STREAMABLE = HEAD_SCORES
STOP_AFTER: int | None = None  # benchmarks/scale.py: time the first layers only (no evaluation, no export)
REFUSED = {
    "fisher": "its scores are gradients of the task loss: a backward pass through the whole model",
    "output-fisher": "its scores are gradients of the model's output: a backward pass through the whole model",
    "kwon": "its Fisher scores need a backward pass through the whole model",
    "michel": "its scores are gradients of the task loss: a backward pass through the whole model",
    "michel-iterative": "it re-scores the whole model after each step (gradients through every layer)",
    "sap": "it reads every layer's attention maps against word-level parses and ranks heads across layers",
    "sapx": "it fuses SAP's attention-parse scores with whole-model gradients",
    "entropy": "it ranks heads across layers by whole-model attention statistics",
    "confidence": "it ranks heads across layers by whole-model attention statistics",
    "attn-drop": "it drops whole blocks ranked across layers; use --units heads with a per-layer score",
    "random": "a baseline of the in-memory pipeline",
}


def body_share(budget: Budget | None, cost: CostModel) -> Budget | None:
    """`params:F` keeps F of the model's total parameters, embeddings included; every layer keeps the same share
    of its own attention + feed-forward parameters, so that share is what the whole-model fraction leaves for the
    body: (F x total - fixed) / body."""
    if budget is None or budget.kind != "params" or not cost.fixed_params:
        return budget
    body = cost.total("params") - cost.fixed_params
    keep = (budget.keep * cost.total("params") - cost.fixed_params) / body
    if keep <= 0:
        raise SynpruneError(f"budget params:{budget.keep} keeps less than the {cost.fixed_params:,.0f} parameters no unit "
                            "removes (embeddings, norms): use a larger fraction")
    return Budget("params", min(1.0, keep))


@dataclass(frozen=True)
class Recipe:
    """What the layer-local recipe does: head and neuron scores (neurons None: heads only), a budget or a
    sparsity per layer, and a repair (`ls` options as repair/ls.py)."""

    heads: str = "flap"
    neurons: str | None = "wanda"
    budget: Budget | None = None
    sparsity: float = 0.5
    repair: str = "none"
    ls: LSOptions = LSOptions()

    @classmethod
    def of(cls, cfg: PruneConfig) -> "Recipe":
        """The recipe of a run's options, or a one-line refusal of what cannot stream."""
        if cfg.method not in STREAMABLE:
            why = REFUSED.get(cfg.method, "it is not one of the layer-local scores")
            raise SynpruneError(f"--stream: method {cfg.method} cannot stream ({why}); use one of {', '.join(STREAMABLE)}")
        if cfg.cf:
            raise SynpruneError("--stream: Candidate Filtering re-evaluates the whole pruned model per candidate; drop --cf")
        if cfg.units == "kv-groups":
            raise SynpruneError("--stream prunes query heads (and neurons); use --units heads or heads,neurons")
        neurons = None
        if cfg.neurons:
            neurons = PARTNER[cfg.method] if cfg.neuron_score == "auto" else cfg.neuron_score
            if neurons not in NEURON_SCORES:
                raise SynpruneError(f"--stream: --neuron-score {neurons} cannot stream (it needs whole-model gradients); "
                                    f"use one of {', '.join(NEURON_SCORES)}")
        budget = parse_budget(cfg.budget) if cfg.budget else None
        if cfg.repair not in ("none", "ls", "bias", "ls+bias"):
            raise SynpruneError(f"--stream: --repair {cfg.repair} is not layer-wise; use none, ls, bias or ls+bias")
        return cls(cfg.method, neurons, budget, cfg.sparsity, cfg.repair, LSOptions(bias=cfg.repair == "ls+bias"))

    def to_json(self) -> dict:
        return {"heads": self.heads, "neurons": self.neurons, "sparsity": self.sparsity, "repair": self.repair,
                "budget": None if self.budget is None else f"{self.budget.kind}:{self.budget.keep:g}",
                "selection": "per layer: each layer keeps its share of the budget"}


class States:
    """Per-batch hidden states of one stream (dense or pruned, calibration or evaluation). Kept in memory
    while every stream together stays under `bound` bytes, else written to `folder` (one file per batch and
    layer, under a name keyed by the run's content) and read back when used."""

    def __init__(self, name: str, folder: Path | None):
        self.name, self.folder = name, folder
        self.items: list[Any] = []

    def set(self, layer: int, values: list[torch.Tensor]) -> None:
        old = self.items
        if self.folder is None:
            self.items = list(values)
        else:
            self.items = []
            for b, v in enumerate(values):
                path = self.folder / f"{self.name}-{layer:04d}-{b:05d}.pt"
                torch.save(v, path)
                self.items.append(path)
        for o in old:
            if isinstance(o, Path):
                o.unlink(missing_ok=True)

    def __getitem__(self, b: int) -> torch.Tensor:
        v = self.items[b]
        return torch.load(v) if isinstance(v, Path) else v

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class LayerwiseRun:
    """What the layer-local recipe did."""

    pruned_heads: list[tuple[int, int]]
    pruned_neurons: list[tuple[int, int]]
    head_scores: np.ndarray
    metrics: dict[str, float]  # dense / pruned perplexity ("" when no evaluation texts)
    seconds_per_layer: list[float]
    notes: list[str] = field(default_factory=list)
    spilled: bool = False
    seq_len: float = 0.0  # mean real tokens per calibration text (the n of a flops budget)
    cost: CostModel | None = None  # the costs the budget was met under (the whole model's parameters counted)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _real(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x[mask.bool()] if mask is not None else x.reshape(-1, x.shape[-1])


def _run(layer, states: States, calls, masks, taps: dict | None = None, on=None, outputs=(), stop=None) -> list:
    """The layer over every batch of `states`; with `taps`, `on(batch, key, x)` gets each tapped module's input
    (or output, keys in `outputs`) at the real tokens; `stop`: end each call once that key is read."""
    out = []
    for b in range(len(states)):
        h = states[b]
        if taps:
            with Tap(taps, lambda key, x, b=b: on(b, key, x), output=set(outputs), stop_after=stop) as tap:
                tap.keep = masks[b].bool() if masks[b] is not None else None
                try:
                    out.append(call_layer(layer, h, calls[b]))
                except StopForward:
                    out.append(None)
        else:
            out.append(call_layer(layer, h, calls[b]))
    return out


def _handles(source: LayerSource, i: int, layer) -> tuple[AttentionHandles | None, FFNHandles]:
    adapter = get_adapter(source.model)
    attn = None if getattr(layer, "_synprune_attention_removed", False) else adapter.attention(i, layer)
    return attn, adapter.ffn(i, layer)


def prune_layers(source: LayerSource, calib: list[dict], evals: list[dict], recipe: Recipe, *,
                 write=None, memory_bound: float = 2e9, spill_key: str = "") -> LayerwiseRun:
    """Run the layer-local recipe (module doc) over `source`'s layers on calibration inputs `calib` and
    evaluation inputs `evals` (model input dicts); `write(i, tensors)` receives each pruned layer's weights."""
    from synprune.model.remove import remove_units

    model, adapter = source.model, get_adapter(source.model)
    if recipe.repair in ("bias", "ls+bias"):
        s = adapter.shape(model)
        parts = [p for p, has in (("attention", s.out_bias), ("ffn", s.down_bias or not recipe.neurons)) if not has]
        if not all([adapter.enable_bias(model, part) for part in parts]):
            raise SynpruneError(f"--repair {recipe.repair} needs biases on the attention output and down projections; "
                                f"{adapter.family} models have none there: use --repair ls")
    shape = adapter.shape(model)
    cost = CostModel.from_model(model)
    layer_budget = body_share(recipe.budget, cost)
    masks = [c.get("attention_mask") for c in calib]
    emasks = [e.get("attention_mask") for e in evals]
    seq_len = float(sum(int(m.sum()) if m is not None else c["input_ids"].numel() for m, c in zip(masks, calib))
                    / max(1, sum(len(c["input_ids"]) for c in calib)))
    # the arguments each layer is called with, and the first layer's inputs
    source.load_outside("input", tokens=torch.cat([c["input_ids"].reshape(-1) for c in calib + evals]))
    calls, first = [], []
    for inputs in calib + evals:
        h0, per_layer = capture(model, inputs)
        first.append(h0)
        calls.append(per_layer)
    source.release_outside()
    nbytes = sum(h.numel() * 4 for h in first) * 2
    folder = None
    if nbytes > memory_bound:
        from synprune.io import cache_dir

        folder = cache_dir() / "stream" / spill_key
        folder.mkdir(parents=True, exist_ok=True)
        log(f"hidden states need {nbytes / 1e9:.2f} GB, over the {memory_bound / 1e9:.2f} GB bound: spilled to {folder}")
    n = len(calib)
    dense, pruned, edense, epruned = (States(k, folder) for k in ("dense", "pruned", "eval-dense", "eval-pruned"))
    for s, part in ((dense, first[:n]), (pruned, first[:n]), (edense, first[n:]), (epruned, first[n:])):
        s.set(-1, part)
    del first
    check = held_out(n, recipe.ls)
    head_grid = np.zeros((shape.n_layers, shape.n_heads))
    all_heads, all_neurons, seconds, notes = [], [], [], []
    try:
        for i in range(min(source.n_layers, STOP_AFTER or source.n_layers)):
            t0 = time.perf_counter()
            layer = source.layer(i)
            at = [c[i] for c in calls]
            attn, ffn = _handles(source, i, layer)
            # 1. the dense layer: statistics and targets
            attn_m = Moments(attn.head_dim) if attn is not None else None
            ffn_m = Moments()
            targets: list[dict] = [{} for _ in range(n)]
            taps = {"ffn": ffn.down, **({"attn": attn.out_proj} if attn is not None else {})}
            outs = {("attn", "out"): attn.out_proj if attn is not None else None, ("ffn", "out"): ffn.down}
            taps.update({k: m for k, m in outs.items() if m is not None})

            def on(b, key, x):
                if key == "attn":
                    attn_m.add(x)
                elif key == "ffn":
                    ffn_m.add(x)
                else:
                    targets[b][key[0]] = x.float()

            dense_out = _run(layer, dense, at[:n], masks, taps, on, outputs=[k for k in taps if isinstance(k, tuple)])
            edense_out = _run(layer, edense, at[n:], emasks)
            # 2. scores, selection, slicing
            hs = np.full(shape.n_heads, np.inf)
            if attn is not None:
                hs[attn.kept_heads] = head_scores(recipe.heads, attn, attn_m)
            ns = None
            if recipe.neurons is not None:
                ns = np.full(shape.intermediate, np.inf)
                ns[ffn.kept] = neuron_scores(recipe.neurons, ffn, ffn_m)
            head_grid[i] = np.where(np.isfinite(hs), hs, 0)
            ph, pn = select_layer(cost, hs, ns, budget=layer_budget, sparsity=recipe.sparsity, seq_len=seq_len,
                                  same_scale=recipe.heads == recipe.neurons == "layer-fisher")
            vectors = {}
            if recipe.repair == "bias":
                if attn is not None and len(ph) < len(attn.kept_heads):
                    cols = [attn.kept_heads.index(q) * attn.head_dim + j for q in ph for j in range(attn.head_dim)]
                    vectors["attn"] = pruned_bias(weight_rows(attn.out_proj), attn_m.mean, cols)
                if pn:
                    vectors["ffn"] = pruned_bias(weight_rows(ffn.down), ffn_m.mean, [ffn.kept.index(u) for u in pn])
            remove_units(model, [(i, h) for h in ph], [(i, u) for u in pn])
            attn, ffn = _handles(source, i, layer)
            if "attn" in vectors and attn is not None:
                add_bias(attn.out_proj, vectors["attn"])
            if "ffn" in vectors:
                add_bias(ffn.down, vectors["ffn"])
            # 3. least squares, sublayer by sublayer, on the pruned model's states
            if recipe.repair in ("ls", "ls+bias"):
                subs = []
                if attn is not None and (i > 0 or recipe.ls.first_attention) and attn.num_heads:
                    subs.append(("attn", attn.out_proj, attn.head_dim))
                if recipe.neurons is not None and ffn.kept:
                    subs.append(("ffn", ffn.down, 1))
                for kind, module, width in subs:
                    lsm = LSMoments(weight_rows(module).shape[1], weight_rows(module).shape[0])
                    bias = module.bias.detach().double() if module.bias is not None else None

                    def on_ls(b, key, x, kind=kind, lsm=lsm, bias=bias):
                        y = targets[b][kind].double()
                        lsm.add(x, y - bias if bias is not None else y, check[b])

                    _run(layer, pruned, at[:n], masks, {kind: module}, on_ls, stop=kind)
                    verdict = fit_scales(module, lsm, width, recipe.ls, any(check))
                    if isinstance(verdict, str):
                        notes.append(f"layer {i} {kind}: {verdict}")
                        continue
                    scales, beta = verdict
                    fold_scales(module, scales, width)
                    if beta is not None:
                        add_bias(module, beta)
            # 4. the pruned layer on the pruned states; 5. write, drop
            pruned_out = _run(layer, pruned, at[:n], masks)
            epruned_out = _run(layer, epruned, at[n:], emasks)
            dense.set(i, dense_out)
            edense.set(i, edense_out)
            pruned.set(i, pruned_out)
            epruned.set(i, epruned_out)
            del dense_out, edense_out, pruned_out, epruned_out, targets
            if write is not None:  # each tensor converted to the checkpoint's dtype as it is written
                write(i, {source.prefix(i) + k: Pieces(tuple(v.shape), source.save_dtype,
                                                       lambda v=v: iter([v.detach().to(source.save_dtype)]))
                          for k, v in layer.state_dict().items()})
            source.release(i)
            all_heads += [(i, h) for h in ph]
            all_neurons += [(i, u) for u in pn]
            seconds.append(time.perf_counter() - t0)
            log(f"layer {i + 1}/{source.n_layers}: pruned {len(ph)} heads, {len(pn)} neurons "
                f"({seconds[-1]:.1f} s, peak {peak_rss_mb():.0f} MB)")
        metrics = {}
        if evals and len(seconds) == source.n_layers:
            source.load_outside("output")
            metrics = dict(zip(("dense", "pruned"), _perplexities(source, evals, [edense, epruned])))
            source.release_outside()
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return LayerwiseRun(sorted(all_heads), sorted(all_neurons), head_grid, metrics, seconds, notes, folder is not None, seq_len,
                        cost)


def _perplexities(source: LayerSource, evals: list[dict], streams: list[States]) -> list[float]:
    """Token-weighted perplexity of each stream of last-layer states (dense, pruned): the model's own final
    norm and head (and e.g. logit soft-capping) run on them a batch at a time, over one range of the
    vocabulary at a time (`head_ranges`: each range of the head's weights read once, for every batch of every
    stream), each position keeping a running log-sum-exp over the ranges and its next token's logit, so
    neither the head nor a batch's whole logits are ever in memory."""
    runs: list[list] = [[None] * len(evals) for _ in streams]  # per stream and batch: (max, sum, target logit)
    for start, stop in head_ranges(source):
        for k, states in enumerate(streams):
            for b, inputs in enumerate(evals):
                runs[k][b] = _head_range(source.model, inputs, states[b], start, stop, runs[k][b])
    out = []
    for k in range(len(streams)):
        nll, tokens = 0.0, 0
        for b, inputs in enumerate(evals):
            m, s, t = runs[k][b]
            real = inputs["attention_mask"][:, 1:] != 0
            nll, tokens = nll + float((m + torch.log(s) - t)[real].sum()), tokens + int(real.sum())
        out.append(LM.perplexity(nll, tokens))
    return out


def _head_range(model, inputs: dict, state: torch.Tensor, start: int, stop: int, run):
    """Fold a batch's logits over vocabulary range start:stop into its running (max, sum of exp(logit - max),
    next token's logit) per position, float64 (`_perplexities`); `run` None: the first range."""
    logits = final_logits(model, inputs, state)[:, :-1]
    top = logits.max(-1).values
    total = (logits - top[..., None]).exp_().sum(-1, dtype=torch.float64)
    top = top.double()
    if run is None:
        m, s, t = top, total, torch.zeros_like(top)
    else:
        m, s, t = run
        new = torch.maximum(m, top)
        m, s = new, s * torch.exp(m - new) + total * torch.exp(top - new)
    targets = inputs["input_ids"][:, 1:]
    at = ((targets >= start) & (targets < stop)).nonzero(as_tuple=True)
    t[at] = logits[at[0], at[1], targets[at] - start].double()
    return m, s, t


def _source_and_model(model: Any, stream: bool):
    """(layer source, TaskModel) for `model` (a folder, a .gguf file, "smollm2", or a loaded TaskModel)."""
    from synprune.model.load import TaskModel, _resolve, as_task_model, with_bos

    if not stream:
        tm = as_task_model(model)
        if tm.kind != "lm":
            raise SynpruneError(f"the layer-local recipe prunes decoder language models; {tm.name} is a {tm.kind} model")
        return ModelLayers(tm.model), tm
    if not isinstance(model, (str, Path)):
        raise SynpruneError("--stream reads the model from its files: pass a folder or a .gguf file, not a loaded model")
    import transformers

    from synprune.io import sha256_dir, sha256_file
    from synprune.model.gguf_file import lean_config_reader

    name, path, local = _resolve(model)
    if not local:
        raise SynpruneError(f"--stream reads a local checkpoint; download {model} first (e.g. `huggingface-cli download`)")
    source = FileLayers(path)
    p = Path(path)
    try:
        if source.gguf:
            with lean_config_reader():  # transformers would parse the file's metadata into numpy views
                tok = transformers.AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        else:
            tok = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise SynpruneError(f"could not load the tokenizer of {name}: {str(e).splitlines()[0]}") from None
    trim_memory()  # what parsing the tokenizer freed
    weights = sha256_file(path) if p.is_file() else sha256_dir(path)
    return source, TaskModel(source.model, with_bos(tok, copy=False), "lm", name, path, weights)


def prune_layerwise(model: Any = None, task: str = "ewt", *, stream: bool = True, config: PruneConfig | None = None,
                    out: str | Path | None = None, export: str | Path | None = None, overwrite: bool = False,
                    glue_dir: str | Path | None = None, text_col: str | None = None, memory_bound: float = 2e9,
                    **options):
    """The layer-local recipe end to end: read the model (its files with `stream`, else loaded whole), prune
    it layer by layer, score dense and pruned perplexity, write OUT/result.json and, with `export`, the pruned
    model (one shard per layer). Returns the PruneResult."""
    from synprune.data.tasks import load_task, make_split
    from synprune.evaluation.evaluate import prepare, task_metrics
    from synprune.export.checkpoint import pruning_info
    from synprune.model.remove import pruning_state
    from synprune.io import refuse_to_replace, sha256_texts
    from synprune.run.prune import task_record
    from synprune.run.result import PruneResult, versions

    cfg = (config or PruneConfig()).replace(**options).validate()
    recipe = Recipe.of(cfg)
    if export is not None:
        refuse_to_replace(export, overwrite, "--export")
    t_start = time.perf_counter()
    data = load_task(task, glue_dir, text_col, None, None)
    if not data.lm:
        raise SynpruneError(f"the layer-local recipe scores perplexity; task {task} is a classification task: "
                            "use a text task (ewt, or a .txt file)")
    source, tm = _source_and_model(model, stream)
    cfg.check_model(max_positions(tm.model))
    metric_names = task_metrics(tm, data)
    split = make_split(data, cfg.calib_size, cfg.seed, cfg.eval_size)
    main_split = next(iter(split.evaluation))
    calib = [dict(b.inputs) for b in prepare(tm, split.calibration, cfg.batch_size, cfg.max_length).batches]
    evals = [dict(b.inputs) for b in prepare(tm, split.evaluation[main_split], cfg.batch_size, cfg.max_length).batches]
    key = sha256_texts([str(tm.weights_hash), str(recipe.to_json()),
                        *(str(c["input_ids"].tolist()) for c in calib + evals)])[:24]
    n_dense = sum(p.numel() for p in tm.model.parameters())
    writer = None
    if export is not None:
        from synprune.export.shards import ShardedExport

        writer = ShardedExport(export, source.n_layers + 1)
    try:
        run = prune_layers(source, calib, evals, recipe, write=writer.write if writer else None,
                           memory_bound=memory_bound, spill_key=key)
        state = pruning_state(tm.model)
        budget = None
        if recipe.budget is not None:
            budget = budget_report(run.cost or tm.model, run.pruned_heads, cfg.budget, run.seq_len,
                                   neurons=run.pruned_neurons)
        mode = "stream" if stream else "memory"
        details = {"layerwise": mode, "recipe": recipe.to_json(), "source": source.describe(),
                   "seconds_per_layer": [round(s, 3) for s in run.seconds_per_layer],
                   "peak_rss_mb": round(peak_rss_mb(), 1), "states_spilled_to_disk": run.spilled,
                   **({"budget": budget} if budget else {}), **({"notes": run.notes} if run.notes else {})}
        metric = {"name": metric_names[0], "split": main_split, "dense": run.metrics.get("dense"),
                  "pruned": run.metrics.get("pruned"),
                  "all": {"dense": {main_split: {metric_names[0]: run.metrics.get("dense")}},
                          "pruned": {main_split: {metric_names[0]: run.metrics.get("pruned")}}}}
        shape = get_adapter(tm.model).shape(tm.model)
        result = PruneResult(
            method=cfg.method, cf=False, model=tm.describe(), task=task_record(data, metric_names),
            split={"calibration": len(split.calibration), f"evaluation_{main_split}": len(split.evaluation[main_split]),
                   "note": split.note},
            sparsity=len(run.pruned_heads) / (shape.n_layers * shape.n_heads), n_heads=shape.n_layers * shape.n_heads,
            pruned_heads=run.pruned_heads, removed_layers=state["removed_layers"],
            removed_kv_groups=removed_kv_groups(tm.model, run.pruned_heads), metric=metric, head_scores=run.head_scores,
            config=cfg.to_json(), seed=cfg.seed, timings={"total": time.perf_counter() - t_start},
            versions=versions(None), details=details, pruned_neurons=run.pruned_neurons,
            n_neurons=shape.n_layers * shape.intermediate if recipe.neurons else 0)
        if writer is not None:
            writer.write(source.n_layers, source.outside_tensors())
            info = pruning_info(tm.model, state, run.pruned_heads, run.pruned_neurons,
                                {"kind": recipe.repair, "layerwise": True, **({"skipped": run.notes} if run.notes else {})},
                                n_dense, None, {"path": tm.path, "hash": tm.weights_hash},
                                {"method": cfg.method, "task": data.name, "layerwise": mode, "recipe": recipe.to_json(),
                                 "metric": {k: metric[k] for k in ("name", "dense", "pruned")}})
            writer.finish(tm.model, tm.tokenizer, info)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return result._written(out)
