"""Calibration: the shared context (parses, attention statistics, tokenized batches) every method reads."""
from __future__ import annotations

from dataclasses import dataclass

from synprune.errors import SynpruneError


@dataclass(frozen=True)
class CalibrationOptions:
    """The data a run reads: `--calib-size` examples drawn with `--seed`, parsed by `--parser`, tokenized up to
    `--max-length` in batches of `--batch-size`; `--eval-size` caps each evaluation split (a seeded sample);
    language modelling also scores windows of `--ppl-window` tokens, at most `--eval-windows` of them."""

    calib_size: int = 512
    eval_size: int | None = None
    seed: int = 0
    max_length: int = 128
    batch_size: int = 32
    parser: str = "en_core_web_sm"
    ppl_window: int = 256
    eval_windows: int | None = None

    def validate(self) -> "CalibrationOptions":
        if self.seed < 0:
            raise SynpruneError(f"--seed {self.seed}: seeds must be non-negative integers, e.g. 0")
        if self.calib_size < 1 or self.batch_size < 1 or self.max_length < 4:
            raise SynpruneError("--calib-size and --batch-size must be positive and --max-length at least 4")
        if self.eval_size is not None and self.eval_size < 1:
            raise SynpruneError(f"--eval-size {self.eval_size} must be at least 1 (or left out for the whole split)")
        if self.ppl_window < 2 or (self.eval_windows is not None and self.eval_windows < 1):
            raise SynpruneError(f"--ppl-window {self.ppl_window} must be at least 2 tokens and --eval-windows "
                                f"{self.eval_windows} at least 1 (or left out for every window)")
        return self
