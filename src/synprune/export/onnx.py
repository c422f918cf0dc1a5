"""Optional ONNX export of a pruned model, checked by running it with onnxruntime against torch.

Needs `onnx`, `onnxscript` (torch's dynamo exporter) and `onnxruntime`; without them this is a clear
error, not a crash. Batch size and sequence length stay dynamic.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from synprune.errors import SynpruneError

ONNX_FILE = "model.onnx"


def onnx_input_names(model: nn.Module) -> list[str]:
    """input_ids and attention_mask, plus token_type_ids where the model has more than one segment type."""
    names = ["input_ids", "attention_mask"]
    params = inspect.signature(model.forward).parameters
    if "token_type_ids" in params and int(getattr(model.config, "type_vocab_size", 0) or 0) > 1:
        names.append("token_type_ids")
    return names


class _FirstOutput(nn.Module):
    """Positional inputs and a single tensor output (last hidden state or logits): what ONNX graphs want."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)[0]


def _inputs(model: nn.Module, names: list[str], batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Random ids; every row but the first is right-padded (never fully)."""
    g = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 100))
    out = {"input_ids": torch.randint(min(5, vocab - 1), vocab, (batch, length), generator=g)}
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(1, batch):
        mask[i, max(1, length - 2 * i):] = 0
    out["attention_mask"] = mask
    if "token_type_ids" in names:
        out["token_type_ids"] = (torch.arange(length) >= length // 2).long().expand(batch, length).contiguous()
    return out


def export_onnx(model: nn.Module, folder: str | Path, tolerance: float = 1e-4) -> dict:
    """Write `folder/model.onnx` and check it with onnxruntime on two padded batches of other shapes than
    the one it was traced with. Returns {"file", "inputs", "max_abs_diff"}; a mismatch is a SynpruneError."""
    try:
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError as e:
        raise SynpruneError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is missing): "
                            "pip install onnx onnxscript onnxruntime") from None
    model = model.eval()
    device = next(model.parameters()).device
    names = onnx_input_names(model)
    wrapper = _FirstOutput(model, names).eval()
    trace = _inputs(model, names, 2, 16, seed=0)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    path = Path(folder) / ONNX_FILE
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed" and progress lines are noise here
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, tuple(trace[n].to(device) for n in names), str(path), input_names=names,
                output_names=["output"], dynamic_shapes={n: {0: batch, 1: seq} for n in names}, dynamo=True,
                external_data=n_bytes > 1_500_000_000,  # protobuf's 2 GB limit on one file
                verbose=False,
            )
    except Exception as e:  # the exporter's errors are pages long; the first line names the problem
        first = (str(e).strip().splitlines() or [""])[0]
        raise SynpruneError(f"ONNX export failed ({type(e).__name__}): {first}") from None
    finally:
        exporter_log.setLevel(level)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for b, n, seed in ((3, 11, 1), (1, 7, 2)):
        inputs = _inputs(model, names, b, n, seed)
        got = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])
        with torch.no_grad():
            ref = wrapper(*(inputs[k].to(device) for k in names)).float().cpu()
        diff = (got - ref).abs()
        if diff.dim() == 3:  # token outputs: padded positions are undefined, compare real tokens only
            diff = diff[inputs["attention_mask"].bool()]
        worst = max(worst, float(diff.max()))
        tol = tolerance * (1.0 + float(ref.abs().max()))
        if not worst <= tol:
            raise SynpruneError(f"the ONNX model's outputs differ from torch's by {worst:.3g} (tolerance {tol:.3g})")
    return {"file": ONNX_FILE, "inputs": names, "max_abs_diff": worst}
