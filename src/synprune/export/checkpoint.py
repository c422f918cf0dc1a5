"""Save a physically pruned model as a standard checkpoint folder (`synprune.model.pruned` loads it back).

Two kinds of folder, both with `model.safetensors` (the sliced weights, with the model's own state-dict keys),
the tokenizer and `synprune_pruning.json` (kept units per layer in original indices, the model class and its Auto
class, provenance):
- standard (every layer pruned to the same sizes, `--layout uniform`): `config.json` is the family's own config
  with the smaller sizes (`synprune.export.standard`), so plain `from_pretrained(DIR)` loads it;
- adaptive (layers of different sizes): `config.json` is the unpruned architecture plus the per-layer recipe
  and an `auto_map` to `synprune_modeling.py`, shipped in the folder (imports only torch and transformers), so
  `from_pretrained(DIR, trust_remote_code=True)` loads it without synprune (`synprune.export.remote`).
`synprune.model.pruned.load_pruned` reads both.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from synprune import __version__
from synprune.devices import dispatched, gathered, input_device
from synprune.arch import head_grid, kv_grid
from synprune.errors import SynpruneError
from synprune.selection.budget import total_parameters
from synprune.io import atomic_write_json, sha256_dir
from synprune.model.pruned import FORMAT_VERSION, PRUNING_FILE, WEIGHTS_FILE
from synprune.model.remove import remove_units, validate_heads, validate_neurons
from synprune.export.standard import UniformSizes, standard_model, uniform_sizes  # noqa: F401 (public here too)


# Auto classes tried in this order to name the one a model class belongs to (bare encoder first).
_AUTO_MAPPINGS = (
    ("MODEL_MAPPING_NAMES", "AutoModel"),
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "AutoModelForCausalLM"),
    ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "AutoModelForSequenceClassification"),
    ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "AutoModelForTokenClassification"),
    ("MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", "AutoModelForQuestionAnswering"),
    ("MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES", "AutoModelForMultipleChoice"),
    ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "AutoModelForMaskedLM"),
    ("MODEL_FOR_PRETRAINING_MAPPING_NAMES", "AutoModelForPreTraining"),
    ("MODEL_FOR_NEXT_SENTENCE_PREDICTION_MAPPING_NAMES", "AutoModelForNextSentencePrediction"),
)


def auto_class_name(model: nn.Module) -> str | None:
    """The transformers Auto class that builds `model`'s class for its model type (None if none does)."""
    from transformers.models.auto import modeling_auto

    model_type, name = model.config.model_type, type(model).__name__
    for mapping_name, auto in _AUTO_MAPPINGS:
        value = getattr(modeling_auto, mapping_name, {}).get(model_type)
        if value == name or (isinstance(value, (tuple, list)) and name in value):
            return auto
    return None


def probe_inputs(model: nn.Module, batch: int = 2, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """A small random batch whose second row is padded, to check outputs where padding matters."""
    g = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 100))
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1:, length // 2:] = 0
    device = input_device(model)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def _first_output(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    device = input_device(model)
    return model(**{k: v.to(device) for k, v in inputs.items()})[0]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace `out_dir` by the finished `tmp` folder with renames only, so readers never see half a model."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    trash = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old."))
    os.replace(out_dir, trash / "old")
    os.replace(tmp, out_dir)
    shutil.rmtree(trash, ignore_errors=True)


def _source(model: nn.Module) -> dict[str, Any]:
    path = getattr(model.config, "_name_or_path", "") or ""
    weights_hash = sha256_dir(path) if path and Path(path).is_dir() else None
    return {"path": path or None, "hash": weights_hash}


def export_pruned(model: nn.Module, tokenizer: Any, pruned: Iterable[tuple[int, int]], out_dir: str | Path,
                  meta: dict | None = None, *, overwrite: bool = False, in_place: bool = False,
                  verify: bool = True, onnx: bool = False, neurons: Iterable[tuple[int, int]] = (),
                  repair: Any = None, gguf: str | Path | None = None, gguf_type: str = "f16") -> Path:
    """Remove `pruned` heads from (a copy of) `model` and write the smaller model to `out_dir`, atomically.

    With `verify`, a padded probe batch must give the same first output (last hidden state or logits) as
    the masked model, else nothing is written. `meta` is stored under "meta" in synprune_pruning.json
    (its "source" key, if any, replaces the provenance read from the model's config). With `onnx`, the folder
    also gets `model.onnx`, checked with onnxruntime against torch. `in_place` slices `model` itself instead
    of a deep copy (half the memory; the model stays sliced even if the check fails). A `repair`
    (synprune.repair.Repair) is folded into the weights first, so the folder holds an ordinary smaller model
    that computes what the repaired masked model does. With `gguf` (a decoder pruned to the same sizes in
    every layer), the standard model is also written to that GGUF file (`synprune.export.gguf`, type
    `gguf_type`: f32, f16 or q8_0), checked by reading it back with transformers. Returns `out_dir`.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise SynpruneError(f"{out_dir} already exists and is not empty; choose another folder or overwrite it")
    if gguf is not None:
        from synprune.export.gguf import check_target

        check_target(model, gguf, gguf_type, overwrite)
    pruned = validate_heads(model, pruned)
    neurons = validate_neurons(model, neurons)
    meta = dict(meta or {})
    source = meta.pop("source", None) or _source(model)
    was_training = model.training
    model.eval()
    n_dense = total_parameters(model)
    try:
        small, state, max_diff = _slice_checked(model, pruned, neurons, verify, in_place, repair)
    finally:
        if was_training and not in_place:
            model.train()
    standard = _standard(small)
    if standard is not None:
        small = standard
    elif gguf is not None:
        raise SynpruneError("--gguf needs the same numbers of heads, key/value groups and neurons in every layer, "
                            "and this pruned model's layers differ (an adaptive layout); prune with --layout uniform")
    info = pruning_info(small, state, pruned, neurons, repair, n_dense, max_diff, source, meta, standard=standard is not None)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp."))
    try:
        if onnx:
            from synprune.export.onnx import export_onnx

            info["onnx"] = export_onnx(small, tmp)
        from synprune.export.st import carry_sentence_transformers

        info["sentence_transformers"] = carry_sentence_transformers(source.get("path"), tmp, standard=standard is not None)
        if gguf is not None:
            from synprune.export.gguf import write_gguf

            gguf_is_new = not Path(gguf).exists()
            origin = str(source.get("path") or "")
            info["gguf"] = write_gguf(small, tokenizer, gguf, gguf_type, overwrite=overwrite,
                                      name=(Path(origin).stem or "model") + "-pruned",
                                      tokenizer_gguf=origin if origin.lower().endswith(".gguf") else None)
        _write_folder(small, tokenizer, info, tmp)
        _usual_permissions(tmp)
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if "gguf" in info and gguf_is_new:  # the folder failed after the GGUF file was written: take it back
            Path(gguf).unlink(missing_ok=True)
        raise
    return out_dir


def pruning_info(small: nn.Module, state: dict, pruned: list, neurons: list, repair: Any, n_dense: int,
                 max_diff: float | None, source: dict, meta: dict, standard: bool = False) -> dict:
    """What synprune_pruning.json says about a pruned model (`small`, shaped as `state` says)."""
    return {
        "format_version": FORMAT_VERSION,
        "standard": standard,
        "synprune_version": __version__,
        "model_type": small.config.model_type,
        "model_class": type(small).__name__,
        "auto_class": auto_class_name(small),
        "n_layers": len(state["kept_heads"]),
        "n_heads": head_grid(small)[1],
        "n_kv_groups": kv_grid(small)[1],
        "kept_heads": state["kept_heads"],
        "kept_kv_groups": state["kept_kv_groups"],
        "kept_neurons": state["kept_neurons"],
        "removed_layers": state["removed_layers"],
        "heads_per_layer": [len(k) for k in state["kept_heads"]],
        "kv_groups_per_layer": [len(k) for k in state["kept_kv_groups"]],
        "units": state["counts"],
        "pruned_heads": [list(h) for h in pruned],
        "pruned_neurons": len(neurons),
        "repair": None if repair is None else repair if isinstance(repair, dict) else repair.summary(),
        "parameters": {"dense": n_dense, "pruned": total_parameters(small)},
        "verified_max_abs_diff": max_diff,
        "source": source,
        "meta": meta,
    }
def _standard(small: nn.Module) -> nn.Module | None:
    """`small` as its family's own model with standard sizes, or None when its layers differ in size or its
    family's config cannot say so (then the folder is written the adaptive way)."""
    sizes = uniform_sizes(small)
    if sizes is None:
        return None
    try:
        return standard_model(small, sizes)
    except SynpruneError:
        return None


def _slice_checked(model: nn.Module, pruned: list[tuple[int, int]], neurons: list[tuple[int, int]], verify: bool,
                   in_place: bool, repair: Any = None) -> tuple[nn.Module, dict, float | None]:
    """Fold the repair into and slice (a copy of) the model; with `verify` (float32 only), compare with the
    (repaired) masked model on a probe."""
    from synprune.repair import fold, repaired

    check = verify and next(model.parameters()).dtype == torch.float32
    if check:
        probe = probe_inputs(model)
        with repaired(model, pruned, neurons or None, repair):
            reference = _first_output(model, probe)
    if dispatched(model):  # spread over devices or offloaded: a whole copy on the CPU is what is written
        small = gathered(model)
    else:
        small = model if in_place else copy.deepcopy(model)
    fold(small, repair)
    state = remove_units(small, pruned, neurons)
    if not check:
        return small, state, None
    max_diff = _max_diff(_first_output(small, probe), reference)
    tol = 1e-4 * (1.0 + float(reference.abs().max()))
    if not max_diff <= tol:
        raise SynpruneError(f"the pruned model's outputs differ from the masked model's by {max_diff:.3g} "
                            f"(tolerance {tol:.3g}); nothing was written")
    return small, state, max_diff


def _usual_permissions(folder: Path) -> None:
    """Temp files and folders are private (0600/0700); a saved model should be as readable as any other file."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [folder, *folder.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def _write_folder(small: nn.Module, tokenizer: Any, info: dict, folder: Path) -> None:
    from safetensors.torch import save_model

    config = copy.deepcopy(small.config)
    config.architectures = [type(small).__name__]
    if not info.get("standard"):
        from synprune.export.remote import add_remote_code

        add_remote_code(small, config, info, folder)
    config.save_pretrained(folder)
    save_model(small, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})  # drops tied duplicates
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    atomic_write_json(folder / PRUNING_FILE, info)
