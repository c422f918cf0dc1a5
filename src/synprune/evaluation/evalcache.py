"""Dense evaluations cached on disk (`SYNPRUNE_CACHE/dense/`), so that a second command on the same model,
task and split (prune, sweep, another budget or method) does not pay for them again.

The key is a content hash of everything the numbers depend on: the model's parameters and buffers (names,
shapes, dtypes, bytes), its kind and attention implementation, the tokenized evaluation inputs and labels
of every split (so the tokenizer, max length and batching are covered), the metric names, the source of the
evaluation and metric code, and the torch and transformers versions. A changed weight, example, option or
evaluation code gives a new key; nothing is ever served stale. Entries are written atomically.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from synprune.devices import tensor
from synprune.evaluation.evaluate import Prepared
from synprune.io import atomic_write_json, cache_dir
from synprune.model.load import TaskModel

Scores = dict[str, dict[str, float]]


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _update_tensors(h, named: Mapping[str, torch.Tensor], read=lambda name, t: t) -> None:
    for name in sorted(named):
        t = read(name, named[name])
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(_tensor_bytes(t))


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer (what the model computes with, not where it was loaded from); weights
    that a device_map offloaded are read back one at a time."""
    def read(name: str, t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            return t
        owner, _, attr = name.rpartition(".")
        return tensor(model.get_submodule(owner), attr)

    h = hashlib.sha256()
    _update_tensors(h, model.state_dict(keep_vars=False), read)
    return h.hexdigest()


def _prepared_fingerprint(h, prepared: Prepared) -> None:
    for kind, batches in (("pairs", prepared.batches), ("sentences", prepared.sentences or []),
                          ("windows", prepared.windows or [])):
        for i, b in enumerate(batches):
            h.update(f"{kind}{i}|".encode())
            h.update(b.index.tobytes())
            _update_tensors(h, b.inputs)
            if b.inputs_b is not None:
                _update_tensors(h, {f"b.{k}": v for k, v in b.inputs_b.items()})
            h.update(f"lm={getattr(b, 'lm', False)}|".encode())
            for j, choice in enumerate(getattr(b, "choices", None) or []):  # a causal LM's zero-shot label words
                _update_tensors(h, {f"choice{j}.{k}": v for k, v in choice.items()})
    if prepared.pairs is not None:
        h.update(prepared.pairs.tobytes())
    if prepared.labels is not None:
        h.update(prepared.labels.tobytes())


def cache_key(tm: TaskModel, prepared: Mapping[str, Prepared], metric_names: Sequence[str]) -> str:
    import transformers

    from synprune.evaluation import evaluate
    from synprune.data import metrics

    h = hashlib.sha256()
    config = tm.model.config
    h.update(json.dumps({"kind": tm.kind, "attn": getattr(config, "_attn_implementation", None),
                         "metrics": list(metric_names), "torch": torch.__version__,
                         "transformers": transformers.__version__, "splits": list(prepared)}).encode())
    for module in (evaluate, metrics):
        h.update(Path(module.__file__).read_bytes())
    h.update(model_fingerprint(tm.model).encode())
    for split, p in prepared.items():
        h.update(split.encode())
        _prepared_fingerprint(h, p)
    return h.hexdigest()


def _path(tm: TaskModel, prepared: Mapping[str, Prepared], metric_names: Sequence[str]) -> Path:
    return cache_dir() / "dense" / f"{cache_key(tm, prepared, metric_names)}.json"


def lookup(tm: TaskModel, prepared: Mapping[str, Prepared], metric_names: Sequence[str]) -> Scores | None:
    """The cached dense scores per split, or None (not cached, or a damaged entry that will be replaced)."""
    path = _path(tm, prepared, metric_names)
    try:
        return json.loads(path.read_text())["scores"] if path.is_file() else None
    except (OSError, ValueError, KeyError):
        return None


def cached_dense(tm: TaskModel, prepared: Mapping[str, Prepared], metric_names: Sequence[str],
                 compute: Callable[[], Scores]) -> tuple[Scores, bool]:
    """The dense scores per split from the cache, or `compute()`d and stored; and whether they were cached."""
    scores = lookup(tm, prepared, metric_names)
    if scores is not None:
        return scores, True
    path = _path(tm, prepared, metric_names)
    scores = compute()
    atomic_write_json(path, {"model": tm.name, "splits": {s: p.n for s, p in prepared.items()}, "scores": scores})
    return scores, False
