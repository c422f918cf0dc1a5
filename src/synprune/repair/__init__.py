"""Retrain-free repair of a pruned model, and how a repair is applied (masked) or folded into the weights.

A `Repair` holds, in original unit indices, a scale per kept query head and per kept feed-forward neuron
(`ls`: Kwon et al. 2022's mask tuning) and/or a vector added to each attention output projection's and down
projection's output (`bias`: FLAP's bias compensation, An et al. 2024). Masked, the scales are the values of the
unit mask and the vectors are output hooks (`repaired`); `fold` writes both into the weights, so an exported
repaired model is an ordinary smaller model. Methods: `ls` (repair/ls.py), `bias` (repair/bias.py).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch import nn

from ..arch import attention_handles, ffn_handles, get_adapter, head_grid, is_conv1d
from ..errors import SynpruneError
from synprune.model.masking import UnitMask, mask_from_heads, neuron_grid
from ..progress import log

Unit = tuple[int, int]
REPAIRS = ("none", "ls", "bias", "ls+bias", "refit")


@dataclass(frozen=True)
class RepairOptions:
    """`--repair`: none, or the retrain-free repair applied after pruning (`REPAIRS`)."""

    repair: str = "none"

    def validate(self) -> "RepairOptions":
        if self.repair not in REPAIRS:
            raise SynpruneError(f"--repair {self.repair!r}: use one of {', '.join(REPAIRS)}")
        return self


@dataclass
class Repair:
    kind: str
    head_scales: torch.Tensor | None = None  # (layers, heads); pruned heads 0
    neuron_scales: torch.Tensor | None = None  # (layers, neurons); pruned neurons 0
    attn_bias: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (hidden,) added to out_proj's output
    ffn_bias: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (hidden,) added to down's output
    skipped: list[str] = field(default_factory=list)  # ls: sublayers whose solve was rejected (scales left at 1)
    weights: object = None  # refit: the re-fitted output-projection weights (repair.refit.Refit)

    def summary(self) -> dict:
        out: dict = {"kind": self.kind, **({"skipped": list(self.skipped)} if self.skipped else {})}
        for name, s in (("head_scales", self.head_scales), ("neuron_scales", self.neuron_scales)):
            if s is not None:
                kept = s[s != 0]
                if kept.numel():
                    out[name] = {"min": float(kept.min()), "mean": float(kept.mean()), "max": float(kept.max())}
        if self.weights is not None:
            from .refit import refit_summary

            out.update(refit_summary(self.weights))
        if self.attn_bias or self.ffn_bias:
            out["bias_norms"] = {"attention": {l: float(v.norm()) for l, v in sorted(self.attn_bias.items())},
                                 "ffn": {l: float(v.norm()) for l, v in sorted(self.ffn_bias.items())}}
        return out


    def to_json(self) -> dict:
        """Everything needed to apply or fold the repair again (floats at full precision)."""
        def grid(t):
            return None if t is None else t.double().tolist()

        if self.weights is not None:  # whole matrices: too large for result.json
            return {"kind": self.kind, "weights": None, "summary": self.summary()}

        return {"kind": self.kind, "head_scales": grid(self.head_scales), "neuron_scales": grid(self.neuron_scales),
                "attn_bias": {str(l): v.double().tolist() for l, v in sorted(self.attn_bias.items())},
                "ffn_bias": {str(l): v.double().tolist() for l, v in sorted(self.ffn_bias.items())}}

    @classmethod
    def from_json(cls, data: dict) -> "Repair":
        if data.get("kind") == "refit":
            raise SynpruneError("a --repair refit run keeps its re-fitted weights in memory only (they are whole "
                                "matrices): export it with `synprune prune ... --export DIR` in the same run")
        try:
            def grid(x):
                return None if x is None else torch.tensor(x, dtype=torch.float64)

            return cls(str(data["kind"]), grid(data.get("head_scales")), grid(data.get("neuron_scales")),
                       {int(l): torch.tensor(v, dtype=torch.float64) for l, v in (data.get("attn_bias") or {}).items()},
                       {int(l): torch.tensor(v, dtype=torch.float64) for l, v in (data.get("ffn_bias") or {}).items()})
        except (KeyError, TypeError, ValueError):
            raise SynpruneError("the result's `repair` record is malformed; re-run `synprune prune --export`") from None


def masks(model: nn.Module, heads: Iterable[Unit], neurons: Iterable[Unit] | None,
          repair: Repair | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The head and neuron masks of a pruning, with a repair's scales in place of the ones."""
    hm = mask_from_heads(head_grid(model), heads)
    nm = None if neurons is None else mask_from_heads(neuron_grid(model), neurons)
    if repair is not None and repair.head_scales is not None:
        hm = hm * repair.head_scales
    if repair is not None and repair.neuron_scales is not None:
        nm = (torch.ones(neuron_grid(model)) if nm is None else nm) * repair.neuron_scales
    return hm, nm


@contextlib.contextmanager
def repaired(model: nn.Module, heads: Iterable[Unit] = (), neurons: Iterable[Unit] | None = None,
             repair: Repair | None = None) -> Iterator[UnitMask]:
    """Mask `heads` and `neurons` with `repair` applied (None: plain pruning)."""
    hm, nm = masks(model, heads, neurons, repair)
    hooks = []
    saved = None
    try:
        if repair is not None and repair.weights is not None:
            from .refit import write_refit

            saved = write_refit(model, repair.weights)
        with UnitMask(model, hm, nm) as um:
            if repair is not None:
                for h in attention_handles(model):
                    if h.layer in repair.attn_bias and bool((hm[h.layer] != 0).any()):
                        hooks.append(h.out_proj.register_forward_hook(_add(repair.attn_bias[h.layer])))
                for f in ffn_handles(model):
                    if f.layer in repair.ffn_bias:
                        hooks.append(f.down.register_forward_hook(_add(repair.ffn_bias[f.layer])))
            yield um
    finally:
        for hook in hooks:
            hook.remove()
        if saved is not None:
            from .refit import restore_refit

            restore_refit(model, saved)


def _add(vector: torch.Tensor):
    def hook(module, args, output):
        return output + vector.to(dtype=output.dtype, device=output.device)

    return hook


@torch.no_grad()
def fold(model: nn.Module, repair: Repair | None) -> None:
    """Write a repair into the weights in place: each kept head's output-projection columns and each kept
    neuron's down column times its scale, the bias vectors into the projections' biases. A model without the
    needed bias gets zero biases where its family's config can switch them on (Llama, Qwen3, Gemma: attention_bias;
    Llama: mlp_bias), so it stays an ordinary checkpoint of its family; other families (Mistral, Qwen2, Phi-3)
    cannot take `bias` and are refused."""
    if repair is None:
        return
    if repair.weights is not None:
        from .refit import write_refit

        write_refit(model, repair.weights)
    for h in attention_handles(model):
        kept = h.kept_heads
        if repair.head_scales is not None:
            s = repair.head_scales[h.layer, kept].repeat_interleave(h.head_dim)
            _scale_inputs(h.out_proj, s)
        if h.layer in repair.attn_bias:
            _add_bias(h.out_proj, repair.attn_bias[h.layer], model, "attention")
    for f in ffn_handles(model):
        if repair.neuron_scales is not None:
            _scale_inputs(f.down, repair.neuron_scales[f.layer, f.kept])
        if f.layer in repair.ffn_bias:
            _add_bias(f.down, repair.ffn_bias[f.layer], model, "ffn")


def _scale_inputs(module: nn.Module, scales: torch.Tensor) -> None:
    w = module.weight
    s = scales.to(dtype=w.dtype, device=w.device)
    w.mul_(s[:, None] if is_conv1d(module) else s[None, :])


def _add_bias(module: nn.Module, vector: torch.Tensor, model: nn.Module, part: str) -> None:
    if module.bias is None and not get_adapter(model).enable_bias(model, part):
        raise SynpruneError(f"--repair bias needs biases on the attention output and down projections; "
                            f"{get_adapter(model).family} models have none there: use --repair ls")
    module.bias.add_(vector.to(dtype=module.bias.dtype, device=module.bias.device))


def pooled_token(kind: str) -> str | None:
    """The token a task model's output reads in its last layer: a classifier (an encoder here) pools its first
    token; embedding models (mean pooling) and language models read every token."""
    return "first" if kind == "classifier" else None


def make_repair(kind: str, model: nn.Module, inputs: list[dict], heads: list[Unit], neurons: list[Unit] | None,
                pooled: str | None = None) -> Repair | None:
    """Run repair `kind` (none, ls, bias) for a pruning on calibration `inputs` (model input dicts); `pooled`:
    see `pooled_token` (the ls repair matches only that token in the last layer)."""
    if kind == "none":
        return None
    if kind in ("ls", "ls+bias"):
        from .ls import LSOptions, least_squares

        return least_squares(model, inputs, heads, neurons, options=LSOptions(pooled=pooled, bias=kind == "ls+bias"))
    if kind == "refit":
        from .refit import refit_repair

        return refit_repair(model, inputs, heads, neurons)
    if kind == "bias":
        from .bias import bias_compensation

        if pooled is not None and getattr(model.config, "num_labels", 1) > 1:
            log("note: --repair bias pushed every fine-tuned classifier measured (SST-2, MRPC, CoLA) towards one label "
                "(README, 'Half the FLOPs'; benchmarks/bias_classifiers.py); --repair ls is the repair that helped them")
        return bias_compensation(model, inputs, heads, neurons)
    raise SynpruneError(f"--repair {kind!r}: use one of {', '.join(REPAIRS)}")
