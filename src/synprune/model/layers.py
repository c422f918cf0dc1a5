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
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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

    def load_outside(self, which: str) -> None:
        """Materialise the parameters outside the layers: "input" (what runs before the first layer) or
        "output" (what runs after the last)."""

    def release_outside(self) -> None:
        """Done with the parameters outside the layers."""

    def outside_tensors(self) -> dict[str, torch.Tensor]:
        """The parameters outside the layers as stored (one name per tied group), in `save_dtype`."""
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

        self.path = Path(path)
        self.gguf = self.path.suffix.lower() == ".gguf"
        if self.gguf:
            config = transformers.AutoConfig.from_pretrained(str(self.path.parent), gguf_file=self.path.name)
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
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

        self._reader = GGUFReader(str(self.path))
        arch = self._reader.fields["general.architecture"]
        arch = bytes(arch.parts[arch.data[0]]).decode()
        cfg = self.model.config  # what the tensor processors read (head counts), as transformers parses them
        self._processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config={
            k: getattr(cfg, k) for k in ("num_attention_heads", "num_key_value_heads", "hidden_size", "model_type")
            if getattr(cfg, k, None) is not None})
        gguf_to_hf = get_gguf_hf_weights_map(self.model, self._processor)
        self._gguf_tensors = {t.name: t for t in self._reader.tensors}
        return {hf: gguf for gguf, hf in gguf_to_hf.items() if gguf in self._gguf_tensors}

    def read(self, name: str) -> torch.Tensor:
        """One tensor as stored (safetensors: its own dtype; GGUF: dequantized to float32, as transformers does)."""
        if name not in self._index and name in self._tied:
            name = self._tied[name]
        if name not in self._index:
            raise SynpruneError(f"{self.path} has no tensor {name!r}")
        if self.gguf:
            import numpy as np
            from gguf import dequantize

            t = self._gguf_tensors[self._index[name]]
            w = self._processor.process(weights=dequantize(t.data, t.tensor_type), name=t.name,
                                        tensor_key_mapping={}, parsed_parameters={}).weights
            return torch.from_numpy(w if w.flags.writeable and w.flags.c_contiguous else np.array(w))
        from safetensors import safe_open

        with safe_open(self._index[name], "pt") as f:
            return f.get_tensor(name)

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

    def _outside(self) -> list[str]:
        skip = tuple(self._prefix)
        return [n for n, _ in self.model.named_parameters(remove_duplicate=False) if not n.startswith(skip)]

    def load_outside(self, which: str) -> None:
        skip = self.model.get_output_embeddings() if which == "input" else self.model.get_input_embeddings()
        skipped = {id(p) for p in skip.parameters()} if skip is not None else set()
        self._load([n for n, p in self.model.named_parameters(remove_duplicate=False)
                    if not n.startswith(tuple(self._prefix)) and id(p) not in skipped])

    def release_outside(self) -> None:
        for name in self._outside():
            _set_param(self.model, name, torch.empty(0, device="meta"))

    def outside_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self._outside():
            if name in self._index:
                out[name] = self.read(name).to(self.save_dtype).contiguous()
            elif not self.has(name):
                raise SynpruneError(f"{self.path} has no tensor {name!r}")
        return out

    def describe(self) -> dict:
        return {"path": str(self.path), "format": "gguf" if self.gguf else "safetensors",
                "dtype_on_disk": str(self.save_dtype).replace("torch.", "")}


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

