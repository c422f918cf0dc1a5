"""A pruned model written shard by shard, as a layer-streamed run produces it: one safetensors shard per
decoder layer plus one for the parameters outside the layers, an index (`model.safetensors.index.json`, the
Hugging Face sharded layout) and the same `synprune_pruning.json` as `export_pruned`, so `load_pruned` (and
`synprune.load_pruned`) read it like any synprune export. Everything goes into a hidden folder beside the target
that replaces it only once complete.

Shards are written piece by piece (`save_pieces`): a tensor is given whole or as `Pieces` (its shape, dtype and
a function giving its rows in order, e.g. an embedding read a range of rows at a time), and its bytes go
straight from each piece to the file, so writing never holds more than one piece beyond what the caller
holds (safetensors' `save_file` makes a bytes copy of every tensor first)."""
from __future__ import annotations

import copy
import json
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synprune.io import atomic_write_json
from synprune.export.checkpoint import _swap_in, _usual_permissions
from synprune.model.layers import Pieces
from synprune.model.pruned import INDEX_FILE, PRUNING_FILE


_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


def save_pieces(tensors: dict[str, torch.Tensor | Pieces], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file (the format safetensors reads: 8-byte header size, JSON header, the tensors'
    bytes in header order) from whole tensors or `Pieces`, each piece's bytes written as they are."""
    specs = {k: v if isinstance(v, Pieces) else Pieces(tuple(v.shape), v.dtype, lambda v=v: iter([v]))
             for k, v in tensors.items()}
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, spec in specs.items():
        size = spec.dtype.itemsize
        for d in spec.shape:
            size *= d
        header[name] = {"dtype": _ST_DTYPES[spec.dtype], "shape": list(spec.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, spec in specs.items():
            begin, end = header[name]["data_offsets"]
            written = 0
            for piece in spec.pieces():
                if piece.dtype != spec.dtype:
                    raise ValueError(f"a piece of {name} is {piece.dtype}, not {spec.dtype}")
                data = piece.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
                f.write(memoryview(data))
                written += data.nbytes
            if written != end - begin:
                raise ValueError(f"the pieces of {name} hold {written} bytes, not {end - begin}")


class ShardedExport:
    def __init__(self, out_dir: str | Path, n_shards: int):
        self.out_dir, self.n = Path(out_dir), n_shards
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.out_dir.parent, prefix=f".{self.out_dir.name}.tmp."))
        self.weight_map: dict[str, str] = {}
        self.total = 0

    def write(self, shard: int, tensors: dict[str, torch.Tensor | Pieces]) -> None:
        name = f"model-{shard + 1:05d}-of-{self.n:05d}.safetensors"
        save_pieces(tensors, self.tmp / name, metadata={"format": "pt"})
        for k, v in tensors.items():
            self.weight_map[k] = name
            n = v.dtype.itemsize
            for d in v.shape:
                n *= d
            self.total += n

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
