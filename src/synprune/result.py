"""What a pruning run returns and writes (SPEC section 8)."""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write_json, atomic_write_text


def versions(parser: str | None = None) -> dict[str, str | None]:
    import importlib.metadata as md

    def v(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "synprune": v("synprune"), "torch": v("torch"),
            "transformers": v("transformers"), "tokenizers": v("tokenizers"), "spacy": v("spacy"),
            "numpy": v("numpy"), "parser": parser}


@dataclass
class PruneResult:
    method: str
    cf: bool
    model: dict
    task: dict
    split: dict
    sparsity: float
    n_heads: int
    pruned_heads: list[tuple[int, int]]
    removed_layers: list[int]
    metric: dict
    head_scores: np.ndarray
    config: dict
    seed: int
    timings: dict
    versions: dict
    details: dict = field(default_factory=dict)
    cf_log: list[dict] = field(default_factory=list)
    removed_kv_groups: list[list[int]] = field(default_factory=list)  # [layer, group]: all its query heads pruned

    @property
    def pruned_per_layer(self) -> list[int]:
        counts = [0] * len(self.head_scores)
        for l, _ in self.pruned_heads:
            counts[l] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        out = {
            "method": self.method, "cf": self.cf, "model": self.model, "task": self.task, "split": self.split,
            "sparsity": self.sparsity, "n_heads": self.n_heads, "n_pruned": len(self.pruned_heads),
            "pruned_heads": [list(h) for h in self.pruned_heads], "removed_layers": self.removed_layers,
            "removed_kv_groups": [list(g) for g in self.removed_kv_groups],
            "pruned_per_layer": self.pruned_per_layer, "metric": self.metric,
            "head_scores": np.asarray(self.head_scores, dtype=float).tolist(),
        }
        for key in ("dependency_ranking", "threshold"):
            if key in self.details:
                out[key] = self.details[key]
        out["details"] = {k: v for k, v in self.details.items() if k not in ("dependency_ranking", "threshold")}
        out.update({"config": self.config, "versions": self.versions, "seed": self.seed, "timings": self.timings})
        return out

    def _written(self, out_dir: str | Path | None) -> "PruneResult":
        if out_dir is not None:
            self.write(out_dir)
        return self

    def write(self, out_dir: str | Path) -> Path:
        """The output set: result.json, and cf_log.jsonl with CF. result.json is the set's commit record: it is
        removed first and written last (each file atomically), so a failure part way leaves no result.json
        beside a newer or older cf_log, and a run without CF removes an earlier run's cf_log.jsonl."""
        import json

        out = Path(out_dir)
        (out / "result.json").unlink(missing_ok=True)
        if self.cf:
            atomic_write_text(out / "cf_log.jsonl", "".join(json.dumps(r) + "\n" for r in self.cf_log))
        else:
            (out / "cf_log.jsonl").unlink(missing_ok=True)
        return atomic_write_json(out / "result.json", self.to_json())
