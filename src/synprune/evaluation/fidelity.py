"""Label-free scores: how closely the pruned model reproduces the dense model's own outputs.

Data without labels cannot give a task metric, but SAP, sapx, magnitude, entropy, confidence and the output
Fisher need none to rank heads. Such runs are scored against the dense model instead, under names that say so:
- `cosine_to_dense` (embedding models): mean cosine between each text's pruned and dense mean-pooled
  embedding, x 100 (dense: 100);
- `agreement_with_dense` (classifiers): share of examples whose predicted class is the dense model's, x 100;
- `kl_to_dense` (classifiers): mean KL(dense || pruned) of the predicted class distributions, in nats
  (dense: 0; lower is better).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from synprune.errors import SynpruneError

BY_KIND = {"embedding": ("cosine_to_dense",), "classifier": ("agreement_with_dense", "kl_to_dense")}
NAMES = frozenset(n for names in BY_KIND.values() for n in names)


def metrics_for(kind: str, task_name: str) -> tuple[str, ...]:
    if kind not in BY_KIND:
        raise SynpruneError(f"task {task_name} has no labels; a {kind} model has no label-free score here: "
                            "pass --label-col, or an embedding model or classifier")
    return BY_KIND[kind]


def compute(names: Sequence[str], out: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    result = {}
    for name in names:
        if name == "cosine_to_dense":
            d = out.shape[1] // (2 if out.shape[1] != reference.shape[1] else 1)
            parts = [slice(0, reference.shape[1])] if out.shape[1] == reference.shape[1] else [slice(0, d), slice(d, None)]
            cos = [_cosine(out[:, s], reference[:, s]) for s in parts]
            result[name] = 100.0 * float(np.mean(cos))
        elif name == "agreement_with_dense":
            result[name] = 100.0 * float(np.mean(out.argmax(-1) == reference.argmax(-1)))
        elif name == "kl_to_dense":
            p, q = _log_softmax(reference), _log_softmax(out)
            result[name] = float(np.mean((np.exp(p) * (p - q)).sum(-1)))
        else:
            raise SynpruneError(f"unknown label-free metric {name!r}; use one of {', '.join(sorted(NAMES))}")
    return result


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-12)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
