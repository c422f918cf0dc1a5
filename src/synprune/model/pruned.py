"""Read back what `synprune.export.checkpoint` writes: a folder whose weights have the pruned shapes, with
`synprune_pruning.json` saying which heads, key/value groups and neurons it kept; also an original checkpoint
loaded as its task used it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synprune.errors import SynpruneError
from synprune.model.remove import apply_state

PRUNING_FILE = "synprune_pruning.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # a sharded export (layer-streamed: one shard per layer)
FORMAT_VERSION = 2  # 2: kept key/value groups and neurons (format 1 folders still load)


def read_pruning_info(path: str | Path) -> dict:
    f = Path(path) / PRUNING_FILE
    if not f.is_file():
        raise SynpruneError(f"{path} is not a synprune export: {PRUNING_FILE} is missing")
    info = json.loads(f.read_text())
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise SynpruneError(f"{f} has format {info['format_version']}; this synprune reads up to {FORMAT_VERSION}")
    return info


def _model_class(info: dict) -> Any:
    import transformers

    cls = getattr(transformers, info.get("model_class") or "", None)
    if cls is None and info.get("auto_class"):
        cls = getattr(transformers, info["auto_class"], None)
    if cls is None:
        raise SynpruneError(f"transformers has neither {info.get('model_class')!r} nor {info.get('auto_class')!r}")
    return cls


def load_pruned(path: str | Path, *, device: str | torch.device | None = None,
                attn_implementation: str | None = None) -> tuple[nn.Module, Any]:
    """Load a folder written by `export_pruned`: (model in eval mode, tokenizer or None)."""
    import transformers
    from safetensors.torch import load_model

    path = Path(path)
    info = read_pruning_info(path)
    config = transformers.AutoConfig.from_pretrained(path)
    cls = _model_class(info)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = cls.from_config(config, **kwargs) if hasattr(cls, "from_config") else cls._from_config(config, **kwargs)
    apply_state(model, info)
    try:
        if (path / INDEX_FILE).is_file():
            _load_shards(model, path)
        else:
            load_model(model, str(path / WEIGHTS_FILE), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise SynpruneError(f"weights in {path / WEIGHTS_FILE} do not fit the pruned shape: {first}") from None
    model.eval()
    if device is not None:
        model.to(device)
    return model, _load_tokenizer(path)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")


def _load_shards(model: nn.Module, path: Path) -> None:
    """Load the shards an index names (a layer-streamed export); every parameter and persistent buffer must
    be given, a tied one through its partner."""
    from safetensors.torch import load_file

    files = sorted(set(json.loads((path / INDEX_FILE).read_text())["weight_map"].values()))
    own = model.state_dict()
    given: set[int] = set()
    for f in files:
        tensors = load_file(str(path / f))
        unexpected = set(tensors) - set(own)
        if unexpected:
            raise RuntimeError(f"unexpected key(s) in {f}: {', '.join(sorted(unexpected)[:3])}")
        for k, v in tensors.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise RuntimeError(f"size mismatch for {k}: {tuple(v.shape)} in {f}, {tuple(own[k].shape)} in the model")
            with torch.no_grad():
                own[k].copy_(v)
            given.add(own[k].data_ptr())
    missing = [k for k, v in own.items() if v.data_ptr() not in given and v.numel()]
    if missing:
        raise RuntimeError(f"missing key(s): {', '.join(missing[:3])}")


def _load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved with a model, or None: a local folder without tokenizer files has none (transformers
    would otherwise build an empty one)."""
    import transformers

    local = Path(path)
    if local.is_dir() and not any((local / f).exists() for f in TOKENIZER_FILES):
        return None
    try:
        return transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


# Heads that pretraining left in a checkpoint and that no synprune task scores: a sentence encoder whose config
# names `MPNetForMaskedLM` is used (and pruned) as the bare encoder.
_PRETRAINING_HEADS = ("ForMaskedLM", "ForPreTraining", "ForNextSentencePrediction")


def load_source_model(path: str, kind: str | None = None) -> tuple[nn.Module, Any]:
    """Load an original checkpoint as its task used it: a classifier with its head, an embedding model (`kind`
    "embedding", or a config naming only a pretraining head) as the bare encoder."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise SynpruneError(f"cannot load model {path!r}: {str(e).strip().splitlines()[0]}") from None
    arch = (getattr(config, "architectures", None) or [None])[0]
    if kind == "embedding" or (arch and arch.endswith(_PRETRAINING_HEADS)):
        arch = None
    cls = getattr(transformers, arch, None) if arch else None
    transformers.utils.logging.disable_progress_bar()
    model = (cls or transformers.AutoModel).from_pretrained(path)
    return model.eval(), _load_tokenizer(path)
