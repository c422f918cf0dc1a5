"""`synprune prune`: one method, one budget, one result.json."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..cli import app
from ..progress import console, set_quiet
from ._options import CfOptions, DataOptions, SapOptions, UnitOptions, option_sets


def print_summary(result) -> None:
    m = result.metric
    table = Table(title=f"{result.method}{'+cf' if result.cf else ''} on {result.task['name']}: "
                        f"{len(result.pruned_heads)}/{result.n_heads} heads pruned")
    table.add_column("layer", justify="right")
    table.add_column("heads pruned", justify="right")
    table.add_column("pruned heads")
    for layer, n in enumerate(result.pruned_per_layer):
        heads = ",".join(str(h) for l, h in result.pruned_heads if l == layer)
        table.add_row(str(layer), f"{n}{' (block removed)' if layer in result.removed_layers else ''}", heads)
    console.print(table)
    if "recipe" in result.details:
        console.print(f"recommended recipe for this kind of model: {result.details['recipe']['spec']}")
    if result.n_neurons:
        console.print(f"feed-forward neurons pruned: {len(result.pruned_neurons)}/{result.n_neurons}")
    console.print(f"{m['name']} on {m['split']}: dense [bold]{m['dense']:.2f}[/] -> pruned [bold]{m['pruned']:.2f}[/] "
                  f"({m['pruned'] - m['dense']:+.2f})")
    for name, kind in result.split.get("perplexity_kinds", {}).items():  # language modelling: say which is which
        dense, pruned = (m["all"][k][m["split"]][name] for k in ("dense", "pruned"))
        console.print(f"  {name} ({kind}): dense {dense:.2f} -> pruned {pruned:.2f} ({pruned / dense:.2f}x)")
    if result.cf:
        from synprune.cf.filter import summarize

        c = summarize(result.cf_log)
        console.print(f"CF: {c['pool']} candidates scored alone; walk tried {c['tried']}, removed {c['removed']}, "
                      f"rejected {c['rejected']}; " + (f"pool ran out: filled {c['filled']} heads by the method's order"
                                                       if c["fill"] else "no fill-up needed"))
    console.print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))



@app.command()
@option_sets
def prune(
    data: DataOptions,
    sparsity: float = typer.Option(0.5, help="Fraction of the units (--units; default: attention heads) to remove, in [0, 1)."),
    out: Path = typer.Option(Path("runs/prune"), help="Output folder for result.json."),
    method: Optional[str] = typer.Option(None, help="Scoring method (see `synprune methods`); default: the recommended recipe for the model's kind and --units (synprune/run/recipes.py; it says which it ran)."),
    sap: SapOptions = SapOptions(),
    parses: Optional[Path] = typer.Option(None, help="CoNLL-U file: calibrate on its sentences with their gold trees instead of spaCy's parses of TASK (evaluation stays on TASK)."),
    cf: bool = typer.Option(False, "--cf", help="Candidate Filtering: re-check each candidate against the task metric on the calibration split."),
    cf_options: CfOptions = CfOptions(),
    budget: Optional[str] = typer.Option(None, help="Budget instead of --sparsity: heads:F, params:F or flops:F (fraction to keep)."),
    unit_options: UnitOptions = UnitOptions(),
    export: Optional[Path] = typer.Option(None, help="Also write the physically pruned model to this folder (--layout uniform: a standard checkpoint for plain from_pretrained; adaptive: from_pretrained(trust_remote_code=True) or synprune.load_pruned)."),
    onnx: bool = typer.Option(False, "--onnx", help="With --export: also write model.onnx, checked with onnxruntime."),
    gguf: Optional[Path] = typer.Option(None, "--gguf", help="With --export: also write this GGUF file for llama.cpp (a decoder pruned with --layout uniform)."),
    gguf_type: str = typer.Option("f16", "--gguf-type", help="With --gguf: f32, f16 or q8_0."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the --export folder (and the --gguf file) if it already holds files."),
    stream: bool = typer.Option(False, "--stream", help="Decoders: read, prune, repair and export one layer at a time from the model's files (layer-local scores, per-layer budget; docs/big-models.md)."),
    layerwise: bool = typer.Option(False, "--layerwise", help="The --stream recipe on the model loaded whole (for comparison)."),
    device_map: Optional[str] = typer.Option(None, help="Spread the model over several devices with accelerate: auto, "
                                             "balanced, or a JSON file of module name -> device (GPU index, cpu, disk)."),
    max_memory: Optional[str] = typer.Option(None, help="With --device-map: the most each device may hold, e.g. 0=20GiB,1=20GiB,cpu=60GiB."),
) -> None:
    """Prune MODEL on TASK: score its attention heads (with --units also key/value groups or feed-forward neurons),
    remove them to a budget, optionally re-check (--cf) and repair (--repair), evaluate, and write OUT/result.json;
    --export also saves the smaller model."""
    from synprune.run.prune import prune as run_prune

    from synprune.devices import parse_device_map, parse_max_memory

    set_quiet(data.quiet)
    if stream or layerwise:
        from synprune.errors import SynpruneError
        from synprune.run.stream import prune_layerwise

        if onnx or parses is not None or cf or device_map or gguf:
            raise SynpruneError("--stream/--layerwise take neither --onnx, --gguf, --parses, --cf nor --device-map (docs/big-models.md)")
        result = prune_layerwise(data.model, str(data.task), stream=stream, out=out, export=export, overwrite=overwrite,
                                 glue_dir=data.glue_dir, text_col=data.text_col, sparsity=sparsity, method=method,
                                 **data.config(), **sap.config(), budget=budget, **unit_options.config())
        print_summary(result)
        console.print(f"wrote {out / 'result.json'}" + (f"; pruned model in {export}" if export else ""))
        return
    placed = {"device_map": parse_device_map(device_map), "max_memory": parse_max_memory(max_memory)}
    result = run_prune(data.model, task=str(data.task), sparsity=sparsity, out=out, **data.columns(), method=method,
                       **data.config(), **sap.config(), cf=cf, **cf_options.config(), budget=budget, **unit_options.config(),
                       export=export, onnx=onnx, parses_file=parses, overwrite=overwrite, gguf=gguf, gguf_type=gguf_type, **placed)
    print_summary(result)
    console.print(f"wrote {out / 'result.json'}" + (f" and {out / 'cf_log.jsonl'}" if cf else "")
                  + (f"; pruned model in {export}" if export else "") + (f"; GGUF in {gguf}" if gguf else ""))
