"""A pruned model written shard by shard, as a layer-streamed run produces it: one safetensors shard per
decoder layer plus one for the parameters outside the layers, an index (`model.safetensors.index.json`, the
Hugging Face sharded layout) and the same `synprune_pruning.json` as `export_pruned`, so `load_pruned` (and
`synprune.load_pruned`) read it like any synprune export. Everything goes into a hidden folder beside the target
that replaces it only once complete."""
from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synprune.io import atomic_write_json
from synprune.export.checkpoint import _swap_in, _usual_permissions
from synprune.model.pruned import INDEX_FILE, PRUNING_FILE


class ShardedExport:
    def __init__(self, out_dir: str | Path, n_shards: int):
        self.out_dir, self.n = Path(out_dir), n_shards
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.out_dir.parent, prefix=f".{self.out_dir.name}.tmp."))
        self.weight_map: dict[str, str] = {}
        self.total = 0

    def write(self, shard: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        name = f"model-{shard + 1:05d}-of-{self.n:05d}.safetensors"
        save_file(tensors, str(self.tmp / name), metadata={"format": "pt"})
        for k, v in tensors.items():
            self.weight_map[k] = name
            self.total += v.numel() * v.element_size()

    def finish(self, model: nn.Module, tokenizer: Any, info: dict) -> Path:
        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]
        config.save_pretrained(self.tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.tmp)
        atomic_write_json(self.tmp / INDEX_FILE, {"metadata": {"total_size": self.total}, "weight_map": self.weight_map})
        atomic_write_json(self.tmp / PRUNING_FILE, info)
        _usual_permissions(self.tmp)
        _swap_in(self.tmp, self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
