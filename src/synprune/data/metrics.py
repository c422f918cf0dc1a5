"""Metrics by their official names (GLUE's x 100; perplexity as is), and which way each one is better.

`LOWER_IS_BETTER` is the one place that knows a metric's direction: Candidate Filtering's tolerance, the
"best" marks of tables and reports, and plots all ask `higher_is_better` / `goodness`.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def _skm():
    # imported when a metric needs it: 38 MB with scipy (benchmarks/scale.py parts), which perplexity never needs
    from sklearn import metrics

    return metrics


def _stats():
    from scipy import stats

    return stats


METRICS: dict[str, MetricFn] = {
    "accuracy": lambda p, y: float(_skm().accuracy_score(y, p)),
    "f1": lambda p, y: float(_skm().f1_score(y, p)),
    "matthews": lambda p, y: float(_skm().matthews_corrcoef(y, p)),
    "pearson": lambda p, y: float(_stats().pearsonr(p, y)[0]),
    "spearman": lambda p, y: float(_stats().spearmanr(p, y)[0]),
}


# Metrics where a smaller value is better; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"perplexity", "window_perplexity", "kl_to_dense"})


def higher_is_better(name: str) -> bool:
    return name not in LOWER_IS_BETTER


def direction_text(name: str) -> str:
    return "higher is better" if higher_is_better(name) else "lower is better"


def goodness(name: str, value: float) -> float:
    """`value` on a higher-is-better scale (perplexity is negated), for comparisons that ignore the direction."""
    return value if higher_is_better(name) else -value


def best(name: str, values):
    """The best of `values` for metric `name`."""
    return max(values) if higher_is_better(name) else min(values)


def compute(names: Sequence[str], predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """Each named metric x 100; a constant prediction gives 0 correlation rather than NaN."""
    p, y = np.asarray(predictions), np.asarray(labels)
    out = {}
    for name in names:
        with warnings.catch_warnings():  # constant input is handled here (0), and common under heavy pruning
            warnings.simplefilter("ignore", _stats().ConstantInputWarning)
            value = METRICS[name](p, y) if len(p) else float("nan")
        out[name] = 0.0 if value != value and len(p) else 100.0 * value
    return out
