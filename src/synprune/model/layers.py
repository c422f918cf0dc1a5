"""A decoder read one layer at a time: from its files (`FileLayers`: safetensors shards or a GGUF file, the
checkpoint's own dtype on disk, float32 in memory per layer) or from a model already in memory (`ModelLayers`).

Both give the same thing: `model`, a model object whose layers are materialised on demand (`layer(i)`, float32)
and released after use (`release(i)`; for files: back to the meta device). Which modules form a layer, which
parameters lie outside the layers (embeddings, final norm, output head) and how layers are called all come from
the model's own class and its family adapter; nothing here branches on a family.

The layers are driven by `capture` (one forward of the model's own code, with every layer replaced by a
recorder: the arguments the model gives each layer, e.g. attention masks, rotary or sliding-window tables, and
the first layer's input) and `final_logits` (the model's own head over hidden states given as the last
layer's output).

What lies outside the layers is never whole in memory either when read from files: the input embedding holds
only the rows of the tokens a run uses, and the output head computes one range of the vocabulary at a time
(`head_ranges`), its rows read for that range. A GGUF file's header is read by `model.gguf_file` (plain values,
not gguf's numpy views), and glibc is asked to return freed blocks promptly (`return_freed_memory`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import torch
from torch import nn

from synprune.arch import get_adapter, out_dim
from synprune.errors import SynpruneError
from synprune.model.activations import StopForward


def _set_param(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    module._parameters[leaf] = nn.Parameter(value, requires_grad=False)


def _prefixes(model: nn.Module) -> list[str]:
    """Each layer's parameter-name prefix ("model.layers.3."), found by module identity."""
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(layer)] + "." for layer in get_adapter(model).layers(model)]


class Pieces(NamedTuple):
    """A tensor given in pieces (for writing, `export.shards.save_pieces`): its shape and dtype, and
    `pieces()`, its rows in order (tensors of that dtype whose first dimensions add up to shape[0])."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    pieces: Callable[[], Iterator[torch.Tensor]]


class LayerSource:
    """What the layer-by-layer recipe reads from (see the module doc)."""

    model: nn.Module
    save_dtype: torch.dtype  # the dtype the export is written in

    @property
    def n_layers(self) -> int:
        return len(get_adapter(self.model).layers(self.model))

    def prefix(self, i: int) -> str:
        return self._prefix[i]

    def layer(self, i: int) -> nn.Module:
        raise NotImplementedError

    def release(self, i: int) -> None:
        """Done with layer i: its memory may go."""

    def load_outside(self, which: str, tokens: torch.Tensor | None = None) -> None:
        """Materialise the parameters outside the layers: "input" (what runs before the first layer; with
        `tokens`, only the rows of the input embedding that those token ids select) or "output" (what runs
        after the last, less the output head's weight, which `head_rows` gives in ranges: `head_ranges`)."""

    def release_outside(self) -> None:
        """Done with the parameters outside the layers."""

    def head_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop of the output head's weight (one per vocabulary entry), float32, in memory of their
        own (so that a streamed and an in-memory run compute the head from equal tensors alike)."""
        raise NotImplementedError

    def outside_tensors(self) -> dict[str, torch.Tensor | Pieces]:
        """The parameters outside the layers as stored (one name per tied group), in `save_dtype`: whole, or
        (from files) a matrix as `Pieces` read a range of rows at a time when written."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {}


class ModelLayers(LayerSource):
    """A model loaded whole (the in-memory run of the layer-local recipe): layers are its own, in float32."""

    def __init__(self, model: nn.Module, save_dtype: torch.dtype | None = None):
        self.save_dtype = save_dtype or next(model.parameters()).dtype
        for p in model.parameters():  # not model.float(): transformers refuses it on a model loaded from GGUF
            if p.dtype != torch.float32:
                p.data = p.data.float()
        self.model = model.eval()
        self._prefix = _prefixes(model)

    def layer(self, i: int) -> nn.Module:
        return get_adapter(self.model).layers(self.model)[i]

    def head_rows(self, start: int, stop: int) -> torch.Tensor:
        return _own(self.model.get_output_embeddings().weight.detach()[start:stop])

    def outside_tensors(self) -> dict[str, torch.Tensor]:
        skip = tuple(self._prefix)
        seen: set[int] = set()
        out = {}
        for name, p in self.model.named_parameters():  # one name per tied parameter
            if not name.startswith(skip) and id(p) not in seen:
                seen.add(id(p))
                out[name] = p.detach().to(self.save_dtype).contiguous()
        return out


class FileLayers(LayerSource):
    """A checkpoint read lazily: a folder of safetensors (one file or shards with an index) or a GGUF file.
    The model skeleton has its parameters on the meta device (no memory) and its buffers (rotary tables)
    computed as usual."""

    def __init__(self, path: str | Path, attn_implementation: str = "sdpa"):
        import transformers
        from accelerate import init_empty_weights

        return_freed_memory()
        self.path = Path(path)
        self.gguf = self.path.suffix.lower() == ".gguf"
        if self.gguf:
            from synprune.model.gguf_file import GGUFFile, gguf_config

            self._file = GGUFFile(self.path)
            config = gguf_config(self.path, self._file)
        else:
            config = transformers.AutoConfig.from_pretrained(str(self.path))
        archs = getattr(config, "architectures", None) or []
        if not self.gguf and archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            raise SynpruneError(f"--stream prunes decoder language models; {self.path} is a {archs[0]}")
        with init_empty_weights():
            try:
                model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
            except (ValueError, ImportError):
                model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        if not get_adapter(model).causal:
            raise SynpruneError(f"--stream prunes decoder language models; {config.model_type} is an encoder")
        self.model = model.eval()
        self._prefix = _prefixes(model)
        self._tied = {k: v for k, v in (getattr(model, "_tied_weights_keys", None) or {}).items()} \
            if isinstance(getattr(model, "_tied_weights_keys", None), dict) else {}
        self._files: dict[str, Any] = {}
        self._names: dict[int, str] = {}
        self._embedding: tuple[nn.Module, int | None] | None = None  # the embedding holding some rows only
        self._index = self._gguf_index() if self.gguf else self._st_index()
        self.save_dtype = torch.float32 if self.gguf else self._st_dtype()

    # --- where each tensor is ------------------------------------------------------------------------------------
    def _st_index(self) -> dict[str, str]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            return {k: str(self.path / v) for k, v in json.loads(index.read_text())["weight_map"].items()}
        single = self.path / "model.safetensors"
        if not single.is_file():
            raise SynpruneError(f"--stream reads safetensors weights; {self.path} has neither model.safetensors nor "
                                "model.safetensors.index.json")
        from safetensors import safe_open

        with safe_open(str(single), "pt") as f:
            return {k: str(single) for k in f.keys()}

    def _st_dtype(self) -> torch.dtype:
        from safetensors import safe_open

        name = self.prefix(0) + next(n for n, _ in get_adapter(self.model).layers(self.model)[0].named_parameters())
        with safe_open(self._index[name], "pt") as f:
            code = f.get_slice(name).get_dtype()
        return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}.get(code, torch.float32)

    def _gguf_index(self) -> dict[str, str]:
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

        arch = self._file.value("general.architecture")  # the header read for the config (__init__)
        cfg = self.model.config  # what the tensor processors read (head counts), as transformers parses them
        self._processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config={
            k: getattr(cfg, k) for k in ("num_attention_heads", "num_key_value_heads", "hidden_size", "model_type")
            if getattr(cfg, k, None) is not None})
        gguf_to_hf = get_gguf_hf_weights_map(self.model, self._processor)
        self._gguf_tensors = {t.name: t for t in self._file.tensors}
        return {hf: gguf for gguf, hf in gguf_to_hf.items() if gguf in self._gguf_tensors}

    def read(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """One tensor as stored (safetensors: its own dtype; GGUF: dequantized to float32, as transformers does),
        or only the range `rows` of its first dimension (an embedding's or output head's rows)."""
        if name not in self._index and name in self._tied:
            name = self._tied[name]
        if name not in self._index:
            raise SynpruneError(f"{self.path} has no tensor {name!r}")
        if self.gguf:
            import numpy as np
            from gguf import dequantize

            t = self._gguf_tensors[self._index[name]]
            w = self._processor.process(weights=dequantize(self._file.array(t, rows), t.tensor_type),
                                        name=t.name, tensor_key_mapping={}, parsed_parameters={}).weights
            return torch.from_numpy(w if w.flags.writeable and w.flags.c_contiguous else np.array(w))
        from safetensors import safe_open

        with safe_open(self._index[name], "pt") as f:
            return f.get_tensor(name) if rows is None else f.get_slice(name)[rows]

    def has(self, name: str) -> bool:
        return name in self._index or (name in self._tied and self._tied[name] in self._index)

    # --- materialising ------------------------------------------------------------------------------------------
    def _load(self, names: list[str]) -> None:
        for name in names:
            if self.has(name):
                _set_param(self.model, name, self.read(name).float())
            elif name.endswith(".bias"):  # a zero bias a repair switched on (`Adapter.enable_bias`)
                _set_param(self.model, name, torch.zeros(out_dim(self.model.get_submodule(name.rpartition(".")[0]))))
            else:
                raise SynpruneError(f"{self.path} has no tensor {name!r}")

    def _params(self, i: int) -> list[str]:
        layer = get_adapter(self.model).layers(self.model)[i]
        return [self.prefix(i) + n for n, _ in layer.named_parameters()]

    def layer(self, i: int) -> nn.Module:
        self._load(self._params(i))
        return get_adapter(self.model).layers(self.model)[i]

    def release(self, i: int) -> None:
        get_adapter(self.model).layers(self.model)[i].to("meta")
        trim_memory()

    def _outside(self) -> list[str]:
        skip = tuple(self._prefix)
        return [n for n, _ in self.model.named_parameters(remove_duplicate=False) if not n.startswith(skip)]

    def _name(self, module: nn.Module) -> str:
        """The name of `module`'s weight (an embedding's, the output head's)."""
        if id(module) not in self._names:
            self._names[id(module)] = next(n for n, m in self.model.named_modules() if m is module) + ".weight"
        return self._names[id(module)]

    def load_outside(self, which: str, tokens: torch.Tensor | None = None) -> None:
        model = self.model
        skip = model.get_output_embeddings() if which == "input" else model.get_input_embeddings()
        skipped = {id(p) for p in skip.parameters()} if skip is not None else set()
        embedding = model.get_input_embeddings()
        lazy = {self._name(embedding) if which == "input" and tokens is not None else None,
                self._name(model.get_output_embeddings()) if which == "output" else None} - {None}
        self._load([n for n, p in model.named_parameters(remove_duplicate=False)
                    if not n.startswith(tuple(self._prefix)) and id(p) not in skipped and n not in lazy])
        if which == "input" and tokens is not None:
            self._embed_rows(embedding, torch.unique(tokens))
        trim_memory()

    def _embed_rows(self, embedding: nn.Module, ids: torch.Tensor) -> None:
        """The input embedding holds only the rows `ids` (sorted, unique), read in ranges of rows, and looks
        token ids up among them: the model's own embedding code (scaling included) runs on them unchanged."""
        name = self._name(embedding)
        n, width = embedding.num_embeddings, embedding.embedding_dim
        if len(ids) and int(ids[-1]) >= n:
            raise SynpruneError(f"token id {int(ids[-1])} is outside the {n} rows of {self.path}'s embedding: the "
                                "tokenizer is not the model's")
        rows = torch.empty(len(ids), width)
        step = _chunk_rows(width)
        for start in range(0, n, step):
            stop = min(n, start + step)
            at = (ids >= start) & (ids < stop)
            if at.any():
                rows[at] = self.read(name, slice(start, stop)).float()[ids[at] - start]
        _set_param(self.model, name, rows)
        own = type(embedding).forward
        self._embedding = (embedding, embedding.padding_idx)
        embedding.padding_idx = None  # an index into the whole vocabulary (only its gradient differs)
        embedding.forward = lambda input_ids, *a, **k: own(embedding, torch.searchsorted(ids, input_ids), *a, **k)

    def release_outside(self) -> None:
        if self._embedding is not None:
            embedding, embedding.padding_idx = self._embedding
            del embedding.forward
            self._embedding = None
        for name in self._outside():
            _set_param(self.model, name, torch.empty(0, device="meta"))
        trim_memory()

    def head_rows(self, start: int, stop: int) -> torch.Tensor:
        return _own(self.read(self._name(self.model.get_output_embeddings()), slice(start, stop)).float())

    def _shape(self, name: str) -> tuple[int, ...]:
        if self.gguf:
            return tuple(self._gguf_tensors[self._index[name]].shape)
        from safetensors import safe_open

        with safe_open(self._index[name], "pt") as f:
            return tuple(f.get_slice(name).get_shape())

    def outside_tensors(self) -> dict[str, torch.Tensor | Pieces]:
        out: dict[str, torch.Tensor | Pieces] = {}
        for name in self._outside():
            if name in self._index:
                shape = self._shape(name)
                if len(shape) == 2 and shape[0] > _chunk_rows(shape[1]):  # an embedding, an output head
                    step = _chunk_rows(shape[1])
                    out[name] = Pieces(shape, self.save_dtype, lambda name=name, n=shape[0], step=step: (
                        self.read(name, slice(a, min(n, a + step))).to(self.save_dtype) for a in range(0, n, step)))
                else:
                    out[name] = self.read(name).to(self.save_dtype).contiguous()
            elif not self.has(name):
                raise SynpruneError(f"{self.path} has no tensor {name!r}")
        return out

    def describe(self) -> dict:
        return {"path": str(self.path), "format": "gguf" if self.gguf else "safetensors",
                "dtype_on_disk": str(self.save_dtype).replace("torch.", "")}


CHUNK_BYTES = 1 << 22  # an embedding's or output head's rows read at a time: 4 MB of float32


def _chunk_rows(width: int) -> int:
    return max(1, CHUNK_BYTES // (4 * width))


def _own(x: torch.Tensor) -> torch.Tensor:
    """A float32 copy in memory torch allocated (a numpy-backed tensor or a view in, a fresh tensor out)."""
    return torch.empty(x.shape, dtype=torch.float32, device=x.device).copy_(x)


def head_ranges(source: LayerSource) -> Iterator[tuple[int, int]]:
    """Ranges start:stop of the vocabulary, `CHUNK_BYTES` of float32 output-head weights each, read once each
    (`source.head_rows`). While a range is yielded the model's output head computes that range's logits only,
    so the model's own code around the head (final norm, logit soft-capping: elementwise over the
    vocabulary) gives that range of the model's logits, and the whole head is never in memory."""
    import torch.nn.functional as F

    head = source.model.get_output_embeddings()
    bias = head.bias.detach() if getattr(head, "bias", None) is not None else None
    step = _chunk_rows(head.in_features)
    try:
        for start in range(0, head.out_features, step):
            stop = min(head.out_features, start + step)
            weight, b = source.head_rows(start, stop), None if bias is None else bias[start:stop]
            head.forward = lambda h, weight=weight, b=b: F.linear(h, weight, b)
            yield start, stop
            del head.forward, weight
            trim_memory()
    finally:
        head.__dict__.pop("forward", None)


def _libc():
    """The C library where it is glibc (malloc_trim, mallopt), else None."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim, _LIBC.mallopt  # noqa: B018 (glibc only)
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC or None


_LIBC = None
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_freed_memory() -> None:
    """Ask glibc to give freed memory back to the system promptly, for the rest of the process (elsewhere:
    nothing). By default glibc raises its threshold for mapping a block on its own to the largest block freed
    so far (up to 32 MB), so a layer's weights and activations, once freed, make every later block of that
    size come from the heap, where freed memory stays resident, growing from layer to layer. Fixed at 128
    KB (glibc's starting value), blocks of that size or more are mapped and unmapped on their own, for a
    little more time a layer."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def trim_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


# --- calling layers one at a time ------------------------------------------------------------------------------
def _hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    if args:
        return args[0], args[1:], kwargs
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_states"), (), kwargs


def capture(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
    """(the first layer's input, per layer the other arguments the model calls it with) for one batch, from
    one forward of the model's own code with each layer replaced by a recorder (only what runs before the
    first layer needs weights)."""
    layers = get_adapter(model).layers(model)
    calls: list[tuple[tuple, dict]] = []
    first: list[torch.Tensor] = []

    def recorder(i: int):
        def forward(*args, **kwargs):
            h, rest, kw = _hidden(args, kwargs)
            if i == 0:
                first.append(h)
            calls.append((rest, kw))
            if i == len(layers) - 1:
                raise StopForward
            return h
        return forward

    for i, layer in enumerate(layers):
        layer.forward = recorder(i)
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    except StopForward:
        pass
    finally:
        for layer in layers:
            del layer.forward
    return first[0].float(), calls


def call_layer(layer: nn.Module, h: torch.Tensor, call: tuple[tuple, dict]) -> torch.Tensor:
    args, kwargs = call
    with torch.no_grad():
        out = layer(h, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def final_logits(model: nn.Module, inputs: dict[str, torch.Tensor], state: torch.Tensor) -> torch.Tensor:
    """The model's logits when its last layer outputs `state`: its own final norm and head (and e.g. logit
    soft-capping) run; the embeddings and the layers do not."""
    layers = get_adapter(model).layers(model)
    for layer in layers:
        layer.forward = lambda *a, **k: state
    try:
        with torch.no_grad():
            b, t = inputs["input_ids"].shape
            embeds = torch.zeros(b, t, state.shape[-1], dtype=state.dtype)
            return model(inputs_embeds=embeds, attention_mask=inputs.get("attention_mask"), use_cache=False).logits
    finally:
        for layer in layers:
            del layer.forward

