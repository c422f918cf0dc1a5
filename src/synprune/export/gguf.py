"""Write an ordinary (uniform) transformers decoder as a GGUF file for llama.cpp.

The model must be a plain transformers causal LM whose every layer has the shapes its config states (what
`--layout uniform` exports; an adaptive export, with per-layer head counts, has no GGUF form). Supported
families and their llama.cpp architectures: Llama / SmolLM2 (`llama`), Mistral without a sliding window
(`llama`), Qwen2 (`qwen2`), Qwen3 (`qwen3`), Gemma (`gemma`), Gemma 2 (`gemma2`), Gemma 3 text (`gemma3`).

The conventions written here are llama.cpp's, as its `gguf` Python package states them (architecture names,
tensor names through `gguf.get_tensor_name_map`, metadata keys in `gguf.Keys`) and as transformers' GGUF
reader undoes them:
- Llama-family q/k projections are permuted from transformers' rotate-half rotary layout to GGML's
  interleaved-pairs layout (per head, the two halves of the head dimension are interleaved); Qwen and Gemma
  use GGML's NeoX rotary, the same layout as transformers, so they are written as they are.
- Gemma's RMS norms scale by (1 + w) in transformers and by w in llama.cpp, so every Gemma norm weight is
  written as w + 1.
- Gemma 1 and 2 always tie the output projection to the embedding in llama.cpp; an untied one is refused.
- Tensors: f32 everywhere, or f16 / Q8_0 for matrices with norms and biases in f32; a Q8_0 file keeps a
  matrix whose rows are not a multiple of 32 long in f16 (Q8_0 quantizes rows in blocks of 32).

The tokenizer is copied from the source GGUF file when the model came from one (its tokens, scores, types,
merges, pre-tokenizer name and chat template, exactly), else built from the transformers fast tokenizer:
byte-level BPE becomes llama.cpp's `gpt2` model (tokens, merges), a BPE with byte fallback (sentencepiece
converted) becomes its `llama` model (tokens, scores from the merge order, byte tokens typed as such).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from synprune.errors import SynpruneError
from synprune.model.gguf_file import gguf_config  # noqa: F401  (re-exported: the readback and its users)

GGUF_TYPES = ("f32", "f16", "q8_0")
Q8_BLOCK = 32

# How far each type's rounding may move the logits, relative to the largest |logit| (at least 1): what the tests
# hold the files of the tiny models to (the export itself enforces only the exact layout check, `verify_gguf`).
# On SmolLM2 (1024 tokens of EWT, benchmarks/results/gguf_roundtrip.md) f16 moved them by 1.8e-3 and Q8_0 by
# 4.4e-2 of the largest logit; a wrong layout (q/k order, norm offset, head size) moves them by about their size.
TOLERANCE = {"f32": 1e-5, "f16": 1e-2, "q8_0": 1e-1}


@dataclass(frozen=True)
class Family:
    """How one transformers model type is written for llama.cpp."""
    arch: str                      # llama.cpp's architecture name (gguf.MODEL_ARCH_NAMES)
    permute_qk: bool = False       # GGML's interleaved rotary (llama): permute q/k rows per head
    norm_plus_one: bool = False    # Gemma: transformers computes x * (1 + w), llama.cpp x * w
    tied_only: bool = False        # llama.cpp has no output tensor for this architecture
    swa_pattern: int = 0           # every n-th layer global, the others sliding (gemma2: 2, gemma3: 6)
    name_hint: str = ""            # put into general.name (transformers tells Mistral from Llama by it)


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", permute_qk=True),
    "mistral": Family("llama", permute_qk=True, name_hint="mistral"),
    "qwen2": Family("qwen2"),
    "qwen3": Family("qwen3"),
    "gemma": Family("gemma", norm_plus_one=True, tied_only=True),
    "gemma2": Family("gemma2", norm_plus_one=True, tied_only=True, swa_pattern=2),
    "gemma3_text": Family("gemma3", norm_plus_one=True, swa_pattern=6),
}

# Families whose GGUF architecture transformers' GGUF reader builds back (gemma 1 it cannot).
READABLE_BY_TRANSFORMERS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")


def family_of(model: nn.Module) -> Family:
    """The model's Family, or a one-line error for an encoder or an unsupported decoder."""
    model_type = getattr(model.config, "model_type", None)
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if not getattr(model.config, "is_decoder", False) and not hasattr(model, "lm_head"):
        raise SynpruneError(f"GGUF export is for decoder LMs only; {model_type} is an encoder (export it as a "
                            "folder or --onnx instead)")
    raise SynpruneError(f"GGUF export supports {', '.join(sorted(FAMILIES))}; not {model_type}")


def _cfg(model: nn.Module, name: str, default: Any = None) -> Any:
    return getattr(model.config, name, default)


def head_dim(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def check_uniform(model: nn.Module) -> None:
    """Every layer must have the shapes the config states; else the model is an adaptive (per-layer) export."""
    cfg, hd = model.config, head_dim(model)
    want = {"q_proj": cfg.num_attention_heads * hd, "k_proj": cfg.num_key_value_heads * hd,
            "v_proj": cfg.num_key_value_heads * hd, "gate_proj": cfg.intermediate_size,
            "up_proj": cfg.intermediate_size}
    layers = model.model.layers
    if len(layers) != cfg.num_hidden_layers:
        raise SynpruneError(f"the model has {len(layers)} layers but its config says {cfg.num_hidden_layers}; "
                            "GGUF needs an ordinary model: prune with --layout uniform")
    for i, layer in enumerate(layers):
        found = {**{k: getattr(layer.self_attn, k, None) for k in ("q_proj", "k_proj", "v_proj")},
                 **{k: getattr(layer.mlp, k, None) for k in ("gate_proj", "up_proj")}}
        for name, module in found.items():
            rows = None if module is None else getattr(module, "out_features", None)
            if rows != want[name]:
                raise SynpruneError(
                    f"layer {i}'s {name} has {rows} outputs where the config says {want[name]}: this is a per-layer "
                    "(adaptive) pruned model, which GGUF cannot express; prune with --layout uniform")


def _check_expressible(model: nn.Module, fam: Family) -> None:
    """Refuse configurations whose llama.cpp architecture would compute something else."""
    cfg = model.config
    rope = _rope(model)
    kinds = {p.get("rope_type", "default") for p in rope.values()}
    if not kinds <= {"default", "linear"}:
        raise SynpruneError(f"GGUF export writes default or linear rope scaling; this model uses {sorted(kinds)}")
    if fam.tied_only and not _tied(model):
        raise SynpruneError(f"llama.cpp's {fam.arch} architecture ties the output projection to the embedding; "
                            "this model's are separate")
    if fam.arch == "llama":
        window = _cfg(model, "sliding_window")
        if window and window < cfg.max_position_embeddings:
            raise SynpruneError(f"llama.cpp's llama architecture has no sliding window; this model attends within "
                                f"{window} tokens of {cfg.max_position_embeddings}")
    if fam.arch == "qwen2" and _cfg(model, "use_sliding_window"):
        raise SynpruneError("llama.cpp's qwen2 architecture has no sliding window; this model uses one")
    if fam.swa_pattern:
        want = ["full_attention" if (i + 1) % fam.swa_pattern == 0 else "sliding_attention"
                for i in range(cfg.num_hidden_layers)]
        if list(_cfg(model, "layer_types", want)) != want:
            raise SynpruneError(f"llama.cpp's {fam.arch} makes every {fam.swa_pattern}th layer global and the others "
                                "sliding-window; this model's layer types differ")
        local = rope.get("sliding_attention", {})
        if fam.arch == "gemma3" and (local.get("rope_theta", 10000.0) != 10000.0 or local.get("rope_type", "default") != "default"):
            raise SynpruneError("llama.cpp's gemma3 fixes the sliding layers' rope at base 10000, unscaled; this model's "
                                f"are {local}")
        scalar = _cfg(model, "query_pre_attn_scalar")
        if scalar is not None and int(scalar) != head_dim(model):
            raise SynpruneError(f"llama.cpp's {fam.arch} scales attention by 1/sqrt(head_dim) (= {head_dim(model)}); "
                                f"this model's query_pre_attn_scalar is {scalar}")
    if _cfg(model, "mlp_bias") or (fam.arch in ("llama", "qwen3", "gemma", "gemma2", "gemma3")
                                   and _cfg(model, "attention_bias")):
        raise SynpruneError(f"the model has projection biases, which transformers' and llama.cpp's {fam.arch} "
                            "readers drop; GGUF export supports them only as Qwen2 has them (q, k, v)")


def _tied(model: nn.Module) -> bool:
    head = model.get_output_embeddings()
    return head is None or head.weight is model.get_input_embeddings().weight or (
        head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr())


def _rope(model: nn.Module) -> dict[str, dict]:
    """{layer kind or "default": rope parameters} from transformers 5's rope_parameters."""
    params = _cfg(model, "rope_parameters") or {}
    if params and all(isinstance(v, dict) for v in params.values()):
        return dict(params)
    if not params:
        params = {"rope_theta": _cfg(model, "rope_theta", 10000.0), **(_cfg(model, "rope_scaling") or {})}
    return {"default": dict(params)}


def _permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q/k projection from transformers' rotate-half order to GGML's interleaved pairs, per head:
    head row r < d/2 goes to 2r, row d/2 + r to 2r + 1."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_type(gtype: str, name: str, array: np.ndarray):
    """(data, raw_dtype or None) for one tensor under the file's type."""
    import gguf

    if array.ndim < 2 or gtype == "f32":
        return array.astype(np.float32), None
    if gtype == "q8_0" and array.shape[-1] % Q8_BLOCK == 0:
        return gguf.quants.quantize(array.astype(np.float32), gguf.GGMLQuantizationType.Q8_0), \
            gguf.GGMLQuantizationType.Q8_0
    return array.astype(np.float16), None


FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # gguf.LlamaFileType ALL_F32, MOSTLY_F16, MOSTLY_Q8_0


def tensors(model: nn.Module, fam: Family) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight, in llama.cpp's names and layout, one at a time (the writer
    keeps only the converted f16 / Q8_0 data, so memory stays near the file's size)."""
    import gguf

    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == fam.arch)
    names = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    cfg = model.config
    tied = _tied(model)
    for hf_name, param in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:  # llama.cpp uses token_embd when there is no output tensor
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            if "rotary_emb" in hf_name:
                continue
            raise SynpruneError(f"no llama.cpp {fam.arch} tensor for {hf_name}; GGUF export cannot write this model")
        array = param.detach().to(torch.float32).cpu().numpy()
        if fam.permute_qk and (".attn_q." in name or ".attn_k." in name):
            array = _permute_rotary(array, cfg.num_attention_heads if ".attn_q." in name else cfg.num_key_value_heads)
        if fam.norm_plus_one and "norm" in name and name.endswith(".weight"):
            array = array + 1.0
        yield name, array


def _metadata(model: nn.Module, fam: Family) -> list[tuple[str, Any, str]]:
    """(key, value, kind) of the model's hyper-parameters, kind one of u32, f32, str."""
    import gguf

    cfg, a = model.config, fam.arch
    L, K, R = gguf.Keys.LLM, gguf.Keys.Attention, gguf.Keys.Rope
    hd = head_dim(model)
    rope = _rope(model)
    main = rope.get("full_attention") or rope.get("default") or next(iter(rope.values()))
    vocab = model.get_input_embeddings().weight.shape[0]
    meta = [
        (L.CONTEXT_LENGTH, cfg.max_position_embeddings, "u32"),
        (L.EMBEDDING_LENGTH, cfg.hidden_size, "u32"),
        (L.BLOCK_COUNT, cfg.num_hidden_layers, "u32"),
        (L.FEED_FORWARD_LENGTH, cfg.intermediate_size, "u32"),
        (L.VOCAB_SIZE, vocab, "u32"),
        (K.HEAD_COUNT, cfg.num_attention_heads, "u32"),
        (K.HEAD_COUNT_KV, cfg.num_key_value_heads, "u32"),
        (K.KEY_LENGTH, hd, "u32"),
        (K.VALUE_LENGTH, hd, "u32"),
        (K.LAYERNORM_RMS_EPS, float(cfg.rms_norm_eps), "f32"),
        (R.DIMENSION_COUNT, hd, "u32"),
        (R.FREQ_BASE, float(main.get("rope_theta", 10000.0)), "f32"),
    ]
    if main.get("rope_type") == "linear":
        meta += [(R.SCALING_TYPE, "linear", "str"), (R.SCALING_FACTOR, float(main["factor"]), "f32")]
    if "sliding_attention" in rope:
        meta.append((R.FREQ_BASE_SWA, float(rope["sliding_attention"].get("rope_theta", 10000.0)), "f32"))
    if fam.swa_pattern and _cfg(model, "sliding_window"):
        meta.append((K.SLIDING_WINDOW, int(cfg.sliding_window), "u32"))
    for key, attr in ((L.ATTN_LOGIT_SOFTCAPPING, "attn_logit_softcapping"),
                      (L.FINAL_LOGIT_SOFTCAPPING, "final_logit_softcapping")):
        if _cfg(model, attr) is not None and fam.arch.startswith("gemma"):
            meta.append((key, float(getattr(cfg, attr)), "f32"))
    return [(k.format(arch=a), v, kind) for k, v, kind in meta]


# --- tokenizer --------------------------------------------------------------------------------------------

def tokenizer_from_gguf(path: str | Path) -> list[tuple[str, Any, Any, Any]]:
    """Every `tokenizer.*` field of a GGUF file as (key, value, value type, array element type)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY and len(field.types) > 1 else None
        fields.append((key, field.contents(), vtype, sub))
    return fields


def _pre_name(backend: dict) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE's pre-tokenizer (its split regex)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = backend.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    regexes = [p.get("pattern", {}).get("Regex") for p in parts if p.get("type") == "Split"]
    by_regex = {}
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        by_regex.setdefault(regex, name)
    for regex in regexes:
        if regex in by_regex:
            return by_regex[regex]
    types = [p.get("type") for p in parts]
    if types == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    return "gpt-2" if types == ["ByteLevel"] else "default"


def tokenizer_fields(tokenizer: Any, vocab_size: int) -> list[tuple[str, Any, Any, Any]]:
    """The llama.cpp tokenizer metadata of a transformers fast tokenizer, padded to `vocab_size` tokens."""
    import gguf

    T, V = gguf.Keys.Tokenizer, gguf.GGUFValueType
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    if model.get("type") != "BPE":
        raise SynpruneError(f"GGUF export writes BPE tokenizers (byte-level or with byte fallback); this one is "
                            f"{model.get('type')}")
    n = len(tokenizer)
    if n > vocab_size:
        raise SynpruneError(f"the tokenizer has {n} tokens but the embedding only {vocab_size} rows")
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    added = {t["id"]: t for t in backend.get("added_tokens", [])}
    byte_fallback = bool(model.get("byte_fallback"))
    types = []
    for i, tok in enumerate(tokens):
        if byte_fallback and len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        elif i in added:
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id < n:
        types[tokenizer.unk_token_id] = gguf.TokenType.UNKNOWN
    tokens += [f"[PAD{i}]" for i in range(n, vocab_size)]
    types += [gguf.TokenType.UNUSED] * (vocab_size - n)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    fields: list[tuple[str, Any, Any, Any]] = []
    if byte_fallback:
        # llama.cpp's sentencepiece tokenizer merges the best-scored pair first: score a token by its merge's rank.
        rank = {m.replace(" ", ""): -float(r) for r, m in reversed(list(enumerate(merges)))}
        scores = [rank.get(t, -float(len(merges))) if ty == gguf.TokenType.NORMAL else 0.0
                  for t, ty in zip(tokens, types)]
        meta = json.dumps(backend.get("pre_tokenizer")) + json.dumps(backend.get("normalizer"))
        fields += [(T.MODEL, "llama", V.STRING, None), (T.PRE, "default", V.STRING, None),
                   (T.SCORES, scores, V.ARRAY, V.FLOAT32),
                   (T.ADD_PREFIX, "Prepend" in meta or '"prepend_scheme": "always"' in meta
                    or '"prepend_scheme": "first"' in meta, V.BOOL, None)]
    else:
        fields += [(T.MODEL, "gpt2", V.STRING, None), (T.PRE, _pre_name(backend), V.STRING, None)]
    fields += [(T.LIST, tokens, V.ARRAY, V.STRING), (T.TOKEN_TYPE, [int(t) for t in types], V.ARRAY, V.INT32)]
    if merges and not byte_fallback:
        fields.append((T.MERGES, merges, V.ARRAY, V.STRING))
    for key, attr in ((T.BOS_ID, "bos_token_id"), (T.EOS_ID, "eos_token_id"), (T.UNK_ID, "unk_token_id"),
                      (T.PAD_ID, "pad_token_id")):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            fields.append((key, value, V.UINT32, None))
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    fields.append((T.ADD_BOS, bool(probe) and bos is not None and probe[0] == bos, V.BOOL, None))
    fields.append((T.ADD_EOS, bool(probe) and eos is not None and probe[-1] == eos, V.BOOL, None))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        fields.append((T.CHAT_TEMPLATE, template, V.STRING, None))
    return fields


def _source_gguf(model: nn.Module, tokenizer_gguf: str | Path | None) -> str | None:
    if tokenizer_gguf:
        return str(tokenizer_gguf)
    path = str(getattr(model.config, "_name_or_path", "") or "")
    return path if path.lower().endswith(".gguf") and Path(path).is_file() else None


# --- writing ------------------------------------------------------------------------------------------------

def check_target(model: nn.Module, path: str | Path, gtype: str, overwrite: bool) -> Family:
    """The checks that need no pruning (run them before any work): a supported decoder, a known type, a .gguf
    name, and no existing file unless `overwrite`. Returns the model's Family."""
    path = Path(path)
    if gtype not in GGUF_TYPES:
        raise SynpruneError(f"--gguf-type must be one of {', '.join(GGUF_TYPES)}; not {gtype}")
    if path.suffix.lower() != ".gguf":
        raise SynpruneError(f"the --gguf file name must end in .gguf; not {path.name}")
    if path.exists() and not overwrite:
        raise SynpruneError(f"--gguf {path} already exists; choose another file or add --overwrite")
    if path.is_dir():
        raise SynpruneError(f"--gguf {path} is a folder; pass a file name ending in .gguf")
    return family_of(model)


def write_gguf(model: nn.Module, tokenizer: Any, path: str | Path, gtype: str = "f16", *, name: str | None = None,
               tokenizer_gguf: str | Path | None = None, overwrite: bool = False, verify: bool = True,
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write `model` (an ordinary transformers decoder) and its tokenizer to the GGUF file `path`, atomically.

    `gtype`: f32, f16 or q8_0. The tokenizer metadata is copied from `tokenizer_gguf` (default: the model's own
    GGUF file if it was loaded from one), else built from `tokenizer`. With `verify`, the file is read back with
    transformers' GGUF loader (for the families it can read) before it replaces anything, and its logits on a
    probe batch must match the model's within TOLERANCE[gtype] (relative to the largest logit). Returns a
    summary: architecture, type, tensor count, bytes, and the check's max difference.
    """
    import gguf

    path = Path(path)
    fam = check_target(model, path, gtype, overwrite)
    check_uniform(model)
    _check_expressible(model, fam)
    model_name = name or Path(str(_cfg(model, "_name_or_path", "") or "model")).stem or "model"
    if fam.name_hint and fam.name_hint not in model_name.lower():
        model_name = f"{fam.name_hint}-{model_name}"
    source = _source_gguf(model, tokenizer_gguf)
    vocab = model.get_input_embeddings().weight.shape[0]
    if source is None and tokenizer is None:
        raise SynpruneError("a GGUF file needs the model's tokenizer; none was given")
    tok_fields = tokenizer_from_gguf(source) if source else tokenizer_fields(tokenizer, vocab)
    n_tokens = next(len(v) for k, v, _, _ in tok_fields if k == gguf.Keys.Tokenizer.LIST)
    if n_tokens != vocab:
        raise SynpruneError(f"the tokenizer has {n_tokens} tokens but the embedding {vocab} rows")

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".gguf")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, fam.arch)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(model_name)
        writer.add_file_type(FILE_TYPES[gtype])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value, kind in _metadata(model, fam):
            {"u32": writer.add_uint32, "f32": writer.add_float32, "str": writer.add_string}[kind](key, value)
        for key, value, vtype, sub in tok_fields:
            writer.add_key_value(key, value, vtype, sub_type=sub)
        counts: dict[str, int] = {}
        for tname, array in tensors(model, fam):
            data, raw = _tensor_type(gtype, tname, array)
            writer.add_tensor(tname, data, raw_dtype=raw)
            kind = raw.name if raw is not None else data.dtype.name
            counts[kind] = counts.get(kind, 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)
        info: dict[str, Any] = {"path": str(path), "architecture": fam.arch, "type": gtype, "tensor_types": counts,
                                "bytes": os.path.getsize(tmp), "tokenizer": "copied from " + source if source
                                else "built from the transformers tokenizer"}
        if verify:
            info.update(verify_gguf(model, tmp, gtype))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if log:
        log(f"wrote {path}: {fam.arch}, {gtype}, {info['bytes']:,} bytes")
    return info


@torch.no_grad()
def read_back(path: str | Path) -> nn.Module:
    """The GGUF file loaded by transformers' GGUF reader in float32, its config completed by `gguf_config`."""
    from transformers import AutoModelForCausalLM

    p = Path(path)
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, config=gguf_config(p),
                                                 dtype=torch.float32)
    return model.eval()


def rounded(gtype: str, array: np.ndarray) -> np.ndarray:
    """`array` as the file stores it, read back to float32: what f16 or Q8_0 rounding leaves of it."""
    import gguf

    data, raw = _tensor_type(gtype, "", array)
    return (gguf.quants.dequantize(data, raw) if raw is not None else data).astype(np.float32).reshape(array.shape)


@torch.no_grad()
def as_stored(model: nn.Module, gtype: str) -> nn.Module:
    """A copy of `model` whose weights went through the file's rounding (row permutations and the Gemma norm
    offset commute with it: Q8_0 blocks run along rows and norms stay float32), i.e. what the GGUF file holds."""
    import copy

    if gtype == "f32":
        return model
    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.copy_(torch.from_numpy(rounded(gtype, p.detach().float().cpu().numpy())).to(p.dtype))
    return twin


def _probe(model: nn.Module) -> dict[str, torch.Tensor]:
    """Two rows of 16 spread-out token ids, the second half-padded."""
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = (torch.arange(32).view(2, 16) * 7919 + 3) % vocab
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    device = next(model.parameters()).device
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def verify_gguf(model: nn.Module, path: str | Path, gtype: str,
                inputs: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Read the file back with transformers and compare logits on a padded probe batch with those of the model
    whose weights went through the file's rounding (`as_stored`): they must agree to float32 precision
    (10 x TOLERANCE["f32"] of the largest logit), whatever the type, so any layout or metadata error shows however
    coarse the quantization. The rounding's own effect (the file against the unrounded model: largest |logit
    difference|, top-1 agreement) is reported, not enforced: it is the type's, not the file's. Families transformers cannot read (gemma 1) are checked tensor by tensor (the
    file's tensors against the model's in llama.cpp's layout, rounded the same way)."""
    fam = family_of(model)
    if model.config.model_type not in READABLE_BY_TRANSFORMERS:
        return {"check": "tensors", "max_abs_diff": _compare_tensors(model, fam, path, gtype)}
    back = read_back(path)
    inputs = inputs or _probe(model)
    mask = inputs["attention_mask"].bool()
    ours = model(**inputs).logits.float()
    stored = as_stored(model, gtype)(**inputs).logits.float() if gtype != "f32" else ours
    theirs = back.to(ours.device)(**inputs).logits.float()
    if theirs.shape != ours.shape:
        raise SynpruneError(f"the GGUF file read back gives logits of shape {tuple(theirs.shape)}, the model "
                            f"{tuple(ours.shape)}")
    scale = max(float(ours[mask].abs().max()), 1.0)
    layout = float((theirs - stored)[mask].abs().max())
    if not layout <= TOLERANCE["f32"] * scale * 10:
        raise SynpruneError(f"the GGUF file read back by transformers differs by {layout:.3g} in the logits from the "
                            f"model with its weights rounded to {gtype} (largest logit {scale:.3g}): the file does not "
                            "hold this model; nothing written")
    diff = float((theirs - ours)[mask].abs().max())
    top1 = float((theirs.argmax(-1) == ours.argmax(-1))[mask].float().mean())
    return {"check": "logits", "max_abs_diff": diff, "max_abs_logit": scale, "layout_max_abs_diff": layout,
            "top1_agreement": top1}


def _compare_tensors(model: nn.Module, fam: Family, path: str | Path, gtype: str) -> float:
    import gguf

    reader = gguf.GGUFReader(str(path))
    stored = {t.name: t for t in reader.tensors}
    worst = 0.0
    for name, array in tensors(model, fam):
        t = stored.get(name)
        if t is None:
            raise SynpruneError(f"the GGUF file lacks {name}")
        data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(array.shape).astype(np.float32)
        diff = float(np.abs(data - rounded(gtype, array)).max())
        if not diff <= 1e-6 * max(float(np.abs(array).max()), 1.0):
            raise SynpruneError(f"the GGUF file's {name} differs from the model's by {diff:.3g}; nothing written")
        worst = max(worst, float(np.abs(data - array).max()))
    return worst
