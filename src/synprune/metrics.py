"""GLUE metrics by their official names, all reported x 100."""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm

MetricFn = Callable[[np.ndarray, np.ndarray], float]

METRICS: dict[str, MetricFn] = {
    "accuracy": lambda p, y: float(skm.accuracy_score(y, p)),
    "f1": lambda p, y: float(skm.f1_score(y, p)),
    "matthews": lambda p, y: float(skm.matthews_corrcoef(y, p)),
    "pearson": lambda p, y: float(stats.pearsonr(p, y)[0]),
    "spearman": lambda p, y: float(stats.spearmanr(p, y)[0]),
}


def compute(names: Sequence[str], predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """Each named metric x 100; a constant prediction gives 0 correlation rather than NaN."""
    p, y = np.asarray(predictions), np.asarray(labels)
    out = {}
    for name in names:
        with warnings.catch_warnings():  # constant input is handled here (0), and common under heavy pruning
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            value = METRICS[name](p, y) if len(p) else float("nan")
        out[name] = 0.0 if value != value and len(p) else 100.0 * value
    return out
