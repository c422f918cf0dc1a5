"""`synprune export RESULT_JSON --out DIR`: physically remove the heads a run pruned and save the smaller model."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..cli import app
from ..errors import SynpruneError


def read_result(path: Path) -> dict[str, Any]:
    """The parts of a run's result.json that export needs, checked: model path, pruned heads, removed layers."""
    from ..io import read_json

    result = read_json(path, "the result.json of a `synprune prune` run")
    if not isinstance(result, dict) or "pruned_heads" not in result:
        raise SynpruneError(f"{path} has no `pruned_heads`; is it a synprune result.json?")
    if (result.get("details") or {}).get("layerwise"):
        raise SynpruneError(f"{path} is a layer-local run (--stream/--layerwise), whose repair is folded as each layer is "
                            "written: re-run it with --export DIR")
    return result


def model_location(result: dict[str, Any]) -> str | None:
    model = result.get("model")
    if isinstance(model, str):
        return model
    if isinstance(model, dict):
        return model.get("path") or model.get("name")
    return None


def recorded_hash(result: dict[str, Any]) -> str | None:
    model = result.get("model")
    if isinstance(model, dict):
        return model.get("weights_sha256") or model.get("hash") or model.get("weights_hash") or model.get("sha256")
    return None


def heads_to_remove(result: dict[str, Any], n_heads: int) -> list[tuple[int, int]]:
    """`pruned_heads` plus every head of the `removed_layers` (blocks the layer rule removed whole)."""
    try:
        heads = {(int(l), int(h)) for l, h in result.get("pruned_heads") or []}
        layers = [int(l) for l in result.get("removed_layers") or []]
    except (TypeError, ValueError):
        raise SynpruneError("`pruned_heads` must be a list of [layer, head] pairs and `removed_layers` a list of "
                            "layer numbers") from None
    heads.update((l, h) for l in layers for h in range(n_heads))
    return sorted(heads)


@app.command("export")
def export(
    result_json: Path = typer.Argument(..., help="result.json of an earlier `synprune prune` run."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the pruned model to."),
    model: str = typer.Option(None, "--model", help="Load the model from here instead of result.json's model.path."),
    onnx: bool = typer.Option(False, "--onnx", help="Also write model.onnx, checked with onnxruntime."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it already holds files."),
) -> None:
    """Remove the pruned heads (and neurons) for real, fold the run's repair in, and save the smaller model, its
    tokenizer and the kept units per layer."""
    from ..arch import head_grid
    from synprune.export.checkpoint import export_pruned
    from synprune.model.pruned import load_source_model
    from ..io import sha256_dir

    result = read_result(result_json)
    location = model or model_location(result)
    if not location:
        raise SynpruneError(f"{result_json} names no model (model.path); pass --model PATH")
    kind = result["model"].get("kind") if isinstance(result.get("model"), dict) else None
    from synprune.model.load import check_model_files, reading

    if Path(location).is_dir():
        check_model_files(location)
    with reading(f"the model in {location}", "pass --model a complete model folder"):
        src, tokenizer = load_source_model(location, kind)
    _, n_heads = head_grid(src)
    pruned = heads_to_remove(result, n_heads)
    actual = sha256_dir(location) if Path(location).is_dir() else None
    expected = recorded_hash(result)
    if expected and actual and expected != actual:
        typer.secho(f"warning: the weights in {location} do not match the hash in {result_json}; "
                    "the heads were chosen for other weights", err=True, fg="yellow")
    meta = {
        "source": {"path": location, "hash": actual, "result_hash": expected},
        "result_json": str(result_json.resolve()),
        **{k: result[k] for k in ("method", "cf", "task", "sparsity", "metric", "seed") if k in result},
    }
    from synprune.model.remove import validate_neurons
    from ..repair import Repair

    neurons = validate_neurons(src, result.get("pruned_neurons") or [])
    repair = Repair.from_json(result["repair"]) if result.get("repair") else None
    path = export_pruned(src, tokenizer, pruned, out, meta=meta, overwrite=overwrite, onnx=onnx, neurons=neurons,
                         repair=repair)
    info = json.loads((path / "synprune_pruning.json").read_text())
    dense, small = info["parameters"]["dense"], info["parameters"]["pruned"]
    kept = sum(len(k) for k in info["kept_heads"])
    total = info["n_layers"] * info["n_heads"]
    typer.echo(f"wrote {path}: {kept}/{total} heads kept, attention removed in layers {info['removed_layers'] or 'none'}, "
               f"parameters {dense:,} -> {small:,} (-{100 * (dense - small) / dense:.1f}%)"
               + (f", model.onnx checked (max diff {info['onnx']['max_abs_diff']:.2g})" if "onnx" in info else ""))
