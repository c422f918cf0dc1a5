"""What a pruning run returns and writes (SPEC section 8)."""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synprune.io import atomic_write_json, atomic_write_text


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
    pruned_neurons: list[tuple[int, int]] = field(default_factory=list)  # --units heads,neurons
    n_neurons: int = 0  # neurons of the model when they were prunable units, else 0
    repair: Any = None  # synprune.repair.Repair (its summary goes into details)

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
            "pruned_per_layer": self.pruned_per_layer,
            **({"n_neurons": self.n_neurons, "n_neurons_pruned": len(self.pruned_neurons),
                "pruned_neurons": [list(u) for u in self.pruned_neurons]} if self.n_neurons else {}),
            "metric": self.metric,
            "head_scores": np.asarray(self.head_scores, dtype=float).tolist(),
        }
        for key in ("dependency_ranking", "threshold"):
            if key in self.details:
                out[key] = self.details[key]
        out["details"] = {k: v for k, v in self.details.items() if k not in ("dependency_ranking", "threshold")}
        if self.repair is not None:
            out["repair"] = self.repair.to_json()
        out.update({"config": self.config, "versions": self.versions, "seed": self.seed, "timings": self.timings})
        return out

    @classmethod
    def read(cls, out_dir: str | Path) -> "PruneResult":
        """A result written by `write` (with its cf_log when it used CF), e.g. a finished run a sweep reuses."""
        import json

        out = Path(out_dir)
        d = json.loads((out / "result.json").read_text(encoding="utf-8"))
        cf_log = []
        if d["cf"] and (out / "cf_log.jsonl").is_file():
            cf_log = [json.loads(line) for line in (out / "cf_log.jsonl").read_text(encoding="utf-8").splitlines() if line]
        return cls.from_json(d, cf_log)

    @classmethod
    def from_json(cls, d: dict, cf_log: list[dict] | None = None) -> "PruneResult":
        """The result whose `to_json()` is `d` (and whose CF log is `cf_log`)."""
        details = dict(d.get("details") or {})
        details.update({k: d[k] for k in ("dependency_ranking", "threshold") if k in d})
        cf_log = list(cf_log or [])
        return cls(method=d["method"], cf=d["cf"], model=d["model"], task=d["task"], split=d["split"],
                   sparsity=d["sparsity"], n_heads=d["n_heads"], pruned_heads=[tuple(h) for h in d["pruned_heads"]],
                   removed_layers=d["removed_layers"], metric=d["metric"], head_scores=np.asarray(d["head_scores"]),
                   config=d["config"], seed=d["seed"], timings=d["timings"], versions=d["versions"], details=details,
                   cf_log=cf_log, removed_kv_groups=[list(g) for g in d.get("removed_kv_groups", [])],
                   pruned_neurons=[tuple(u) for u in d.get("pruned_neurons", [])], n_neurons=d.get("n_neurons", 0),
                   repair=_repair(d.get("repair")))

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


def _repair(data: dict | None) -> Any:
    if not data:
        return None
    from synprune.repair import Repair

    return Repair.from_json(data)
