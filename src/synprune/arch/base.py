"""What every model family adapter provides, and the generic slicing that works through it.

A family adapter owns every fact about one model family: where its layers are, the attention projections
(query heads and key/value groups, separate or fused), the feed-forward projections, pre- or post-LayerNorm,
causal or not, what an emptied attention block becomes, how head counts are stored on its modules, and a tiny
random config for tests. Everything that touches units (masking, scans, removal, budgets, export) asks the
adapter; no other module branches on the family.

Units, always in ORIGINAL indices (they stay valid after slicing):
- query head (layer, h), h < n_heads;
- key/value group (layer, g), g < n_kv; query head h reads group h // (n_heads // n_kv);
- feed-forward neuron (layer, i), i < intermediate: one row of each up/gate projection, one column of down.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from synprune.devices import tensor


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2) stores its weight as (in, out), the transpose of nn.Linear (so does its
    zero-safe subclass, which a sliced Conv1D becomes)."""
    return type(module).__name__ in ("Conv1D", "ZeroSafeConv1D")


def out_dim(module: nn.Module) -> int:
    return int(module.weight.shape[1] if is_conv1d(module) else module.weight.shape[0])


def in_dim(module: nn.Module) -> int:
    return int(module.weight.shape[0] if is_conv1d(module) else module.weight.shape[1])


def _zero_safe(module: nn.Module) -> None:
    """Conv1D reshapes its input with `view(-1, width)`, which fails at width 0 (a layer with no neurons left);
    its zero-safe subclass computes the same and keeps the state-dict layout."""
    if is_conv1d(module) and not isinstance(module, _ZeroSafeConv1D()):
        module.__class__ = _ZeroSafeConv1D()


_ZERO_SAFE: list[type] = []


def _ZeroSafeConv1D() -> type:
    if not _ZERO_SAFE:
        from transformers.pytorch_utils import Conv1D

        class ZeroSafeConv1D(Conv1D):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if x.shape[-1] == 0 or self.weight.shape[1] == 0:
                    out = x.new_zeros(*x.shape[:-1], self.weight.shape[1])
                    return out + self.bias if self.bias is not None else out
                return super().forward(x)

        _ZERO_SAFE.append(ZeroSafeConv1D)
    return _ZERO_SAFE[0]


def weight_rows(module: nn.Module) -> torch.Tensor:
    """A Linear's or Conv1D's weight as a detached float64 (out, in) matrix on the CPU."""
    w = tensor(module, "weight").detach().to("cpu", torch.float64)  # also where a device_map offloaded it
    return w.t() if is_conv1d(module) else w


def slice_outputs(module: nn.Module, index: torch.Tensor) -> None:
    """Keep only output features `index` (and their bias entries) of a Linear or Conv1D, in place."""
    dim = 1 if is_conv1d(module) else 0
    index = index.to(module.weight.device)
    w = module.weight.detach().index_select(dim, index).clone()
    module.weight = nn.Parameter(w, requires_grad=module.weight.requires_grad)
    if module.bias is not None:
        module.bias = nn.Parameter(module.bias.detach().index_select(0, index).clone(),
                                   requires_grad=module.bias.requires_grad)
    if is_conv1d(module):
        module.nf = w.shape[1]
        _zero_safe(module)
    else:
        module.out_features = w.shape[0]


def slice_inputs(module: nn.Module, index: torch.Tensor) -> None:
    """Keep only input features `index` of a Linear or Conv1D, in place (the bias is per output: kept)."""
    dim = 0 if is_conv1d(module) else 1
    index = index.to(module.weight.device)
    w = module.weight.detach().index_select(dim, index).clone()
    module.weight = nn.Parameter(w, requires_grad=module.weight.requires_grad)
    if is_conv1d(module):
        _zero_safe(module)
    else:
        module.in_features = w.shape[1]


@dataclass
class AttentionHandles:
    """One layer's self-attention as it is now (possibly sliced). q, k and v may be one fused module, laid
    out [q heads | k groups | v groups] along its outputs."""

    layer: int
    module: nn.Module  # the attention module; keeps the kept-unit bookkeeping
    q: nn.Module
    k: nn.Module
    v: nn.Module
    out_proj: nn.Module
    head_dim: int
    n_heads: int  # query heads of the unpruned model
    n_kv: int  # key/value groups of the unpruned model
    block_parent: nn.Module  # the transformer layer that holds the attention module
    block_attr: str

    @property
    def kept_heads(self) -> list[int]:
        return list(getattr(self.module, "synprune_kept_heads", range(self.n_heads)))

    @property
    def kept_kv(self) -> list[int]:
        return list(getattr(self.module, "synprune_kept_kv", range(self.n_kv)))

    @property
    def num_heads(self) -> int:
        return len(self.kept_heads)

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv

    def group_of(self, head: int) -> int:
        return head // self.group_size

    @property
    def fused(self) -> bool:
        return self.q is self.k

    # names the encoder-era code used
    @property
    def query(self) -> nn.Module:
        return self.q

    @property
    def key(self) -> nn.Module:
        return self.k

    @property
    def value(self) -> nn.Module:
        return self.v


@dataclass
class FFNHandles:
    """One layer's feed-forward block: `up` projections (one row per neuron each; a fused gate|up module
    appears with `up_parts=2`) and the `down` projection (one column per neuron)."""

    layer: int
    module: nn.Module
    up: tuple[nn.Module, ...]
    down: nn.Module
    intermediate: int  # neurons of the unpruned model
    up_parts: int = 1  # how many neuron-sized blocks each up module holds along its outputs (Phi-3's gate_up: 2)

    @classmethod
    def of(cls, layer: int, module: nn.Module, up: tuple[nn.Module, ...], down: nn.Module, up_parts: int = 1) -> "FFNHandles":
        """Handles whose unpruned neuron count is the down projection's input width until the first slicing
        records it on `module`."""
        return cls(layer, module, tuple(up), down, int(getattr(module, "synprune_n_neurons", in_dim(down))), up_parts)

    @property
    def kept(self) -> list[int]:
        return list(getattr(self.module, "synprune_kept_neurons", range(self.intermediate)))

    @property
    def n_up_rows(self) -> int:
        """Up/gate rows per neuron, all up modules together."""
        return len(self.up) * self.up_parts


@dataclass(frozen=True)
class Shape:
    """The unpruned architecture's unit counts and sizes."""

    n_layers: int
    n_heads: int
    n_kv: int
    head_dim: int
    hidden: int
    intermediate: int
    n_up: int  # up/gate rows per neuron (BERT 1, Llama 2)
    qkv_bias: bool
    out_bias: bool
    up_bias: bool
    down_bias: bool


class Adapter:
    """Base class of a family adapter; a family is one subclass in one file, registered with `register`."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    causal: ClassVar[bool] = False
    pre_norm: ClassVar[bool] = False
    # each sublayer's output is normalised before the residual add (Gemma 2/3's sandwich norms): the residual
    # stream's drift cannot be cancelled through the output projection (`RefitOptions.drift` is then off)
    sublayer_output_norm: bool = False
    attention_attr: ClassVar[str] = "attention"  # attribute of a layer that holds its attention block

    # --- where things are -------------------------------------------------------------------------------------
    def layers(self, model: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def attention(self, i: int, layer: nn.Module) -> AttentionHandles:
        raise NotImplementedError

    def ffn(self, i: int, layer: nn.Module) -> FFNHandles:
        raise NotImplementedError

    # --- shape facts from the config ----------------------------------------------------------------------------
    def shape(self, model_or_config: Any) -> Shape:
        cfg = getattr(model_or_config, "config", model_or_config)
        d = _first(cfg, "hidden_size", "n_embd", "dim")
        h = _first(cfg, "num_attention_heads", "n_head", "n_heads")
        kv = getattr(cfg, "num_key_value_heads", None) or h
        dh = getattr(cfg, "head_dim", None) or d // h
        di = getattr(cfg, "intermediate_size", None) or getattr(cfg, "hidden_dim", None) or getattr(cfg, "n_inner", None) or 4 * d
        return Shape(n_layers=_first(cfg, "num_hidden_layers", "n_layer", "n_layers"), n_heads=int(h), n_kv=int(kv),
                     head_dim=int(dh), hidden=int(d), intermediate=int(di), **self.biases(cfg))

    def biases(self, cfg: Any) -> dict:
        """n_up and which projections carry biases (for the cost model); encoders: one up row, all biases."""
        return dict(n_up=1, qkv_bias=True, out_bias=True, up_bias=True, down_bias=True)

    # part ("attention", "ffn") -> the config switch that builds that part's projections with biases
    bias_switches: ClassVar[dict[str, str]] = {}

    def enable_bias(self, model: nn.Module, part: str) -> bool:
        """Give every projection of `part` ("attention": q, k, v and output; "ffn": up/gate and down) a zero bias
        where it has none and turn on the config switch that makes a reload build them, so a bias repair folds
        into an ordinary checkpoint of this family (outputs unchanged). False when the family has no such switch."""
        flag = self.bias_switches.get(part)
        if flag is None:
            return False
        setattr(model.config, flag, True)
        for i, layer in enumerate(self.layers(model)):
            if part == "attention":
                if getattr(layer, "_synprune_attention_removed", False):
                    continue
                h = self.attention(i, layer)
                modules = [h.q, h.k, h.v, h.out_proj]
            else:
                f = self.ffn(i, layer)
                modules = [*f.up, f.down]
            for m in modules:
                if m.bias is None:
                    m.bias = nn.Parameter(m.weight.new_zeros(out_dim(m)), requires_grad=m.weight.requires_grad)
        return True

    # --- what slicing must update ----------------------------------------------------------------------------
    def set_head_counts(self, h: AttentionHandles, n_q: int, n_kv: int) -> None:
        """Update the attention module's own head-count attributes after slicing to n_q heads, n_kv groups."""

    def empty_attention(self, h: AttentionHandles) -> nn.Module:
        """The module that replaces an attention block whose heads are all gone (a residual-only path)."""
        raise NotImplementedError

    # --- standard checkpoints (every layer the same size) ---------------------------------------------------------
    # The config attributes that hold the query heads, key/value heads and feed-forward width, and whether the
    # family's own config can say "fewer heads at the same head size" (an explicit head_dim read by the model).
    # Without that (BERT-family encoders, DistilBERT, MPNet, GPT-2 derive the head size as hidden / heads), a
    # standard checkpoint can only have fewer neurons per layer, never fewer heads.
    heads_config_attr: ClassVar[str] = "num_attention_heads"
    kv_config_attr: ClassVar[str | None] = None
    intermediate_config_attr: ClassVar[str] = "intermediate_size"
    head_dim_in_config: ClassVar[bool] = False

    def standard_config(self, config: Any, n_heads: int, n_kv: int, intermediate: int) -> Any:
        """A copy of the unpruned `config` whose every layer has `n_heads` query heads in `n_kv` key/value groups
        and `intermediate` feed-forward neurons, so the family's own model class builds the pruned shapes. A size
        the config cannot express is a SynpruneError."""
        import copy

        from ..errors import SynpruneError

        s = self.shape(config)
        out = copy.deepcopy(config)
        if (n_heads, n_kv) != (s.n_heads, s.n_kv):
            if not self.head_dim_in_config:
                raise SynpruneError(
                    f"a {self.family} config derives the head size from hidden size / heads, so a standard "
                    f"{type(config).__name__} cannot hold {n_heads} of {s.n_heads} heads per layer; with --layout "
                    "uniform this family prunes feed-forward neurons only (all heads kept), or use --layout adaptive")
            setattr(out, self.heads_config_attr, int(n_heads))
            if self.kv_config_attr:
                setattr(out, self.kv_config_attr, int(n_kv))
            out.head_dim = s.head_dim
        setattr(out, self.intermediate_config_attr, int(intermediate))
        return out

    # --- tests ---------------------------------------------------------------------------------------------------
    def tiny_config(self) -> Any:
        """A 3-layer random config of this family with hidden size 32 (4 query heads) for the test suite."""
        raise NotImplementedError

    @property
    def task_kinds(self) -> tuple[str, ...]:
        """What kind of task model this family makes: causal LMs, or encoders (embedding or classifier)."""
        return ("lm",) if self.causal else ("embedding", "classifier")


def _first(cfg: Any, *names: str) -> int:
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return int(v)
    from ..errors import SynpruneError

    raise SynpruneError(f"config of type {type(cfg).__name__} has none of {', '.join(names)}")
