"""Every option of a pruning run, with SPEC defaults. The whole object is written into each result."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .errors import SynpruneError


UNITS = ("heads", "kv-groups", "heads,neurons")


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
    ppl_window: int = 256  # language modelling: window_perplexity's window in tokens (capped at the model's limit)
    eval_windows: int | None = None  # language modelling: score at most this many (the first) windows

    def validate(self) -> "PruneConfig":
        from synprune.calibrate.attention import DIRECTIONS
        from synprune.calibrate.summary import parse_threshold

        for f in fields(self):  # nan passes every range check written as `not lo <= x <= hi`... or none at all
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SynpruneError(f"--{f.name.replace('_', '-')} {value}: give a finite number")
        if _non_finite_number(str(self.threshold)):
            raise SynpruneError(f"--threshold {self.threshold}: give a finite number or a named threshold")
        if self.seed < 0:
            raise SynpruneError(f"--seed {self.seed}: seeds must be non-negative integers, e.g. 0")
        if not 0 <= self.sparsity < 1:
            raise SynpruneError(f"sparsity {self.sparsity} is outside [0, 1): it is the fraction of heads to remove")
        if self.k < 1:
            raise SynpruneError(f"--k {self.k}: the number of top dependency labels must be at least 1")
        if self.direction not in DIRECTIONS:
            raise SynpruneError(f"--direction {self.direction!r}: use one of {', '.join(DIRECTIONS)}")
        try:
            parse_threshold(str(self.threshold))
        except ValueError as e:
            raise SynpruneError(f"--threshold: {e}") from None
        if not 0 < self.layer_fraction <= 1:
            raise SynpruneError(f"--layer-fraction {self.layer_fraction} must be in (0, 1]")
        if self.calib_size < 1 or self.batch_size < 1 or self.max_length < 4:
            raise SynpruneError("--calib-size and --batch-size must be positive and --max-length at least 4")
        if self.eval_size is not None and self.eval_size < 1:
            raise SynpruneError(f"--eval-size {self.eval_size} must be at least 1 (or left out for the whole split)")
        if self.ppl_window < 2 or (self.eval_windows is not None and self.eval_windows < 1):
            raise SynpruneError(f"--ppl-window {self.ppl_window} must be at least 2 tokens and --eval-windows "
                                f"{self.eval_windows} at least 1 (or left out for every window)")
        if self.pool_ratio is not None and not 0 < self.pool_ratio <= 1:
            raise SynpruneError(f"--pool-ratio {self.pool_ratio} must be in (0, 1]")
        if not 0 < self.tolerance <= 1.5:
            raise SynpruneError(f"--tolerance {self.tolerance} must be a ratio of the dense metric, e.g. 0.95")
        if self.tolerance_abs is not None and self.tolerance_abs < 0:
            raise SynpruneError(f"--tolerance-abs {self.tolerance_abs} must be a non-negative drop of the metric, e.g. 1.0")
        if self.units not in UNITS:
            raise SynpruneError(f"--units {self.units!r}: use one of {', '.join(UNITS)}")
        if self.units == "kv-groups" and self.cf:
            raise SynpruneError("--units kv-groups prunes whole key/value groups, but CF walks single heads; drop +cf or use --units heads")
        if self.dependencies_from is not None:
            from synprune.calibrate.depsource import check_source

            check_source(self.dependencies_from)
        if self.budget is not None:
            from synprune.selection.budget import parse_budget

            parse_budget(self.budget)
        from .repair import REPAIRS

        if self.repair not in REPAIRS:
            raise SynpruneError(f"--repair {self.repair!r}: use one of {', '.join(REPAIRS)}")
        if self.neuron_score != "auto":
            from synprune.methods.neurons import SCORERS

            if self.neuron_score not in SCORERS:
                raise SynpruneError(f"--neuron-score {self.neuron_score!r}: use auto or one of {', '.join(sorted(SCORERS))}")
        return self

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




def _non_finite_number(text: str) -> bool:
    """"nan", "inf", "quantile:nan": a number that parses but is not finite."""
    tail = text.rpartition(":")[2]
    try:
        return not math.isfinite(float(tail))
    except ValueError:
        return False


# Families whose position ids start after the padding index (RoBERTa's scheme): fewer usable positions.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text", "xmod")


def max_positions(model) -> int | None:
    """The longest input `model` can embed, from its config (None when the config does not say)."""
    cfg = getattr(model, "config", model)
    n = getattr(cfg, "max_position_embeddings", None)
    if not isinstance(n, int):
        return None
    if getattr(cfg, "model_type", "") in _OFFSET_POSITIONS and getattr(cfg, "position_embedding_type", "absolute") == "absolute":
        n -= int(getattr(cfg, "pad_token_id", 0) or 0) + 1
    return n
