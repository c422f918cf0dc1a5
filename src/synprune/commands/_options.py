"""Option sets shared by commands. Each set is a dataclass whose fields carry their typer option; a command
takes the whole set as one parameter (`data: DataOptions`) and `option_sets` spreads its fields into the
command line, so `prune` and `sweep` declare each option once and defaults come from `PruneConfig`.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, get_type_hints

import typer

from ..config import PruneConfig

_D = PruneConfig()


class OptionSet:
    """Base of option sets: `config()` gives the fields that are PruneConfig options."""

    def config(self) -> dict[str, Any]:
        names = {f.name for f in fields(PruneConfig)}
        return {k: v for k, v in asdict(self).items() if k in names}  # type: ignore[call-overload]


@dataclass
class DataOptions(OptionSet):
    """Which model and data, and how the calibration sample is drawn and read."""

    model: Annotated[Optional[str], typer.Option(
        help="Model folder, hub id, .gguf file, or smollm2 (the bundled SmolLM2-135M-Instruct GGUF); default: the bundled all-MiniLM-L6-v2.")] = None
    task: Annotated[str, typer.Option(
        help="GLUE task (cola sst2 mrpc stsb qqp mnli qnli rte wnli), a .csv/.tsv/.jsonl file, or language modelling: ewt (UD English EWT) or a .txt file (one text per line).")] = "stsb"
    calib_size: Annotated[int, typer.Option(help="Calibration examples sampled (seeded) from train.")] = _D.calib_size
    eval_size: Annotated[Optional[int], typer.Option(
        help="Evaluate on at most this many (seeded) examples per evaluation split, for quick runs.")] = _D.eval_size
    ppl_window: Annotated[int, typer.Option(
        help="Language modelling: window_perplexity's windows in tokens (the texts joined, non-overlapping windows, "
             "start token first; capped at the model's limit).")] = _D.ppl_window
    eval_windows: Annotated[Optional[int], typer.Option(
        help="Language modelling: score window_perplexity on at most this many (the first) windows.")] = _D.eval_windows
    seed: Annotated[int, typer.Option(help="Seed for the calibration sample and random methods.")] = _D.seed
    max_length: Annotated[int, typer.Option(help="Max tokens per input.")] = _D.max_length
    batch_size: Annotated[int, typer.Option(help="Batch size for attention statistics.")] = _D.batch_size
    parser: Annotated[str, typer.Option(help="spaCy pipeline for dependency parses.")] = _D.parser
    glue_dir: Annotated[Optional[Path], typer.Option(
        help="GLUE folder (glue_data layout); default $SYNPRUNE_GLUE_DIR or ../shared/data/glue.")] = None
    text_col: Annotated[Optional[str], typer.Option(help="Data file: text column.")] = None
    text_pair_col: Annotated[Optional[str], typer.Option(help="Data file: second text column.")] = None
    label_col: Annotated[Optional[str], typer.Option(help="Data file: label column.")] = None
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False

    def columns(self) -> dict[str, Any]:
        """Where to find the task's data (the keyword arguments of `load_task` after the task)."""
        return {"glue_dir": self.glue_dir, "text_col": self.text_col, "text_pair_col": self.text_pair_col,
                "label_col": self.label_col}


@dataclass
class SapOptions(OptionSet):
    """SAP's scoring options and the layer rule."""

    k: Annotated[int, typer.Option(help="SAP: number of top dependency labels.")] = _D.k
    threshold: Annotated[str, typer.Option(help="SAP: global-mean, layer-mean, head-mean, quantile:Q or a number.")] = _D.threshold
    direction: Annotated[str, typer.Option(help="SAP: dep2head, head2dep or max.")] = _D.direction
    keep_punct: Annotated[bool, typer.Option("--keep-punct", help="SAP: count punct arcs too.")] = _D.keep_punct
    dependencies_from: Annotated[Optional[str], typer.Option(
        help="SAP: rank dependency labels on this dataset (GLUE task, .conllu or .txt) instead of the calibration data.")] = _D.dependencies_from
    layer_fraction: Annotated[float, typer.Option(
        help="Remove a layer's whole attention block once this fraction of its heads is pruned.")] = _D.layer_fraction
    units: Annotated[str, typer.Option(
        help="What sparsity and budgets count: heads (query heads), kv-groups (whole key/value groups with all "
             "their query heads: also shrinks the KV cache) or heads,neurons (query heads and feed-forward "
             "neurons; budgets flops:F / params:F run Kwon et al.'s mask search).")] = _D.units
    layout: Annotated[str, typer.Option(
        help="adaptive (each layer keeps what the selection picks) or uniform (every layer keeps the same numbers "
             "of heads, key/value groups and neurons: the export is a standard checkpoint that plain "
             "from_pretrained loads; see docs/load-anywhere.md).")] = _D.layout


@dataclass
class CfOptions(OptionSet):
    """Candidate Filtering's options (used by methods given as NAME+cf)."""

    pool_ratio: Annotated[Optional[float], typer.Option(
        help="CF: candidate pool as a fraction of all heads (default min(1, sparsity + 0.25)).")] = _D.pool_ratio
    tolerance: Annotated[float, typer.Option(help="CF: keep a removal while the metric stays >= tolerance x dense.")] = _D.tolerance
    tolerance_abs: Annotated[Optional[float], typer.Option(
        help="CF: absolute allowed drop of the metric instead of --tolerance.")] = _D.tolerance_abs


@dataclass
class UnitOptions(OptionSet):
    """With --units heads,neurons: the neurons' scores and the mask search; and the repair (any units)."""

    neuron_score: Annotated[str, typer.Option(
        help="With neurons: auto (the method's partner), fisher, output-fisher, magnitude or wanda.")] = _D.neuron_score
    repair: Annotated[str, typer.Option(
        help="Retrain-free repair: none, ls (least-squares rescaling, Kwon et al.), bias (FLAP's bias "
             "compensation) or ls+bias (least-squares scales and output biases fitted together).")] = _D.repair
    rearrange: Annotated[bool, typer.Option(
        "--rearrange/--no-rearrange", help="With neurons and a budget: Kwon et al.'s mask rearrangement (gradient scores).")] = _D.rearrange


def option_sets(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Spread every parameter annotated with an OptionSet dataclass into that set's options (for typer),
    and rebuild the set from them when the command runs."""
    hints = get_type_hints(fn, include_extras=True)
    groups: dict[str, type] = {}
    params: list[inspect.Parameter] = []
    for p in inspect.signature(fn).parameters.values():
        cls = hints.get(p.name)
        if isinstance(cls, type) and issubclass(cls, OptionSet) and is_dataclass(cls):
            groups[p.name] = cls
            types = get_type_hints(cls, include_extras=True)
            params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=types[f.name], default=f.default)
                       for f in fields(cls)]
        else:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation)))

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        for name, cls in groups.items():
            kwargs[name] = cls(**{f.name: kwargs.pop(f.name) for f in fields(cls)})
        return fn(**kwargs)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command
