"""Every option of a pruning run, with SPEC defaults, as one flat record: the whole object is written into each
result, and a sweep compares it to resume. Each stage owns its options as a frozen dataclass beside it, validated
there (`owners`); `PruneConfig.options(Owner)` gives a stage its own."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, get_type_hints

from .errors import SynpruneError


@dataclass
class PruneConfig:
    method: str = "sap"
    sparsity: float = 0.5
    k: int = 5
    threshold: str = "global-mean"
    direction: str = "dep2head"
    keep_punct: bool = False
    layer_fraction: float = 1.0
    calib_size: int = 512
    eval_size: int | None = None  # cap on evaluation examples per split (seeded sample), for quick runs
    seed: int = 0
    max_length: int = 128
    batch_size: int = 32
    parser: str = "en_core_web_sm"
    cf: bool = False
    pool_ratio: float | None = None
    tolerance: float = 0.95
    tolerance_abs: float | None = None
    budget: str | None = None
    units: str = "heads"  # what is pruned: "heads" (query heads), "kv-groups" (whole key/value groups), "heads,neurons"
    dependencies_from: str | None = None  # SAP: rank dependency labels on this dataset instead of the calibration data
    neuron_score: str = "auto"  # --units heads,neurons: how neurons are scored (synprune.methods.neurons)
    repair: str = "none"  # retrain-free repair after pruning: none, ls, bias (synprune.repair)
    rearrange: bool = True  # budgeted neuron search: Kwon et al.'s mask rearrangement
    layout: str = "adaptive"  # "uniform": every layer keeps as many heads, KV groups, neurons (selection.uniform)
    ppl_window: int = 256  # language modelling: window_perplexity's window in tokens (capped at the model's limit)
    eval_windows: int | None = None  # language modelling: score at most this many (the first) windows

    def validate(self) -> "PruneConfig":
        """Every option checked by its owner (`owners`), after what no owner can see: non-finite numbers and
        options that conflict across owners."""
        for f in fields(self):  # nan passes every range check written as `not lo <= x <= hi`... or none at all
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SynpruneError(f"--{f.name.replace('_', '-')} {value}: give a finite number")
        if self.units == "kv-groups" and self.cf:
            raise SynpruneError("--units kv-groups prunes whole key/value groups, but CF walks single heads; drop +cf or use --units heads")
        if self.layout == "uniform" and self.cf:
            raise SynpruneError("--layout uniform chooses whole per-layer allocations, but CF walks single heads; drop +cf or use --layout adaptive")
        for owner in owners():
            self.options(owner).validate()
        return self

    def options(self, owner: type) -> Any:
        """An owner's options (a frozen dataclass whose fields are some of these) with this config's values."""
        return owner(**{f.name: getattr(self, f.name) for f in fields(owner)})

    @property
    def neurons(self) -> bool:
        """Feed-forward neurons are prunable units too."""
        return self.units == "heads,neurons"

    def resolved(self) -> "PruneConfig":
        """`kwon` is Kwon et al. 2022's whole recipe: heads and neurons, Fisher scores, the search with its
        rearrangement, and least-squares repair (unless another repair is asked for); it needs a FLOPs or
        parameter budget."""
        if self.method == "recon":  # methods/recon.py: its own selection walk and the refit repair, always
            if self.budget is None or self.budget.split(":")[0].strip().lower() == "heads":
                raise SynpruneError("method recon prunes heads and neurons under a cost budget: pass --budget params:F (or flops:F)")
            if self.repair not in ("none", "refit") or self.cf:
                raise SynpruneError("method recon re-fits the kept units itself (--repair refit) and has no CF; drop --repair / +cf")
            return self.replace(units="heads,neurons", repair="refit")
        if self.method != "kwon":
            return self
        if self.budget is None or self.budget.split(":")[0].strip().lower() == "heads":
            raise SynpruneError("method kwon searches a mask under a cost budget: pass --budget flops:F (or params:F)")
        return self.replace(units="heads,neurons", neuron_score="fisher", rearrange=True,
                            repair="ls" if self.repair == "none" else self.repair)

    def check_model(self, max_positions: int | None) -> "PruneConfig":
        """Refuse a --max-length the model cannot embed (its position table would be indexed past its end)."""
        if max_positions is not None and self.max_length > max_positions:
            raise SynpruneError(f"--max-length {self.max_length} exceeds the model's limit of {max_positions} tokens; "
                                f"pass --max-length {max_positions} or less")
        return self

    def replace(self, **changes) -> "PruneConfig":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise SynpruneError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return PruneConfig(**{**asdict(self), **changes})

    def to_json(self) -> dict:
        return asdict(self)


def owners() -> tuple[type, ...]:
    """The frozen dataclasses of options that a stage owns and validates (a method's: `register(options=...)`);
    every field of each is a field of `PruneConfig` (the flat record a result keeps), with the same default."""
    from synprune.calibrate import CalibrationOptions
    from synprune.cf import CFOptions
    from synprune.methods import method_options
    from synprune.methods.neurons import NeuronOptions
    from synprune.repair import RepairOptions
    from synprune.selection import SelectionOptions

    return CalibrationOptions, *method_options(), SelectionOptions, CFOptions, RepairOptions, NeuronOptions


def coerce_option(key: str, value: Any) -> Any:
    """An option value given as text (a --grid value, a recipe) or already typed, as the PruneConfig field's type."""
    kind = get_type_hints(PruneConfig)[key]
    if not isinstance(value, str):
        return value
    text = value.strip()
    optional = type(None) in getattr(kind, "__args__", ())
    if optional and text.lower() == "none":
        return None
    base = next((t for t in getattr(kind, "__args__", (kind,)) if t is not type(None)), kind)
    try:
        if base is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return base(text)
    except ValueError:
        raise SynpruneError(f"--grid {key}: {text!r} is not a valid {base.__name__}") from None
