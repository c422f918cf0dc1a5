"""`synprune prune`: one method, one budget, one result.json."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..cli import app
from ..progress import console, set_quiet


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
    console.print(f"{m['name']} on {m['split']}: dense [bold]{m['dense']:.2f}[/] -> pruned [bold]{m['pruned']:.2f}[/] "
                  f"({m['pruned'] - m['dense']:+.2f})")
    console.print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))


@app.command()
def prune(
    model: Optional[str] = typer.Option(None, help="Model folder or hub id (default: the bundled all-MiniLM-L6-v2)."),
    task: str = typer.Option("stsb", help="GLUE task (cola sst2 mrpc stsb qqp mnli qnli rte wnli) or a .csv/.tsv/.jsonl file."),
    sparsity: float = typer.Option(0.5, help="Fraction of all heads to remove, in [0, 1)."),
    out: Path = typer.Option(Path("runs/prune"), help="Output folder for result.json."),
    method: str = typer.Option("sap", help="Scoring method (see `synprune methods`)."),
    k: int = typer.Option(5, help="SAP: number of top dependency labels."),
    threshold: str = typer.Option("global-mean", help="SAP: global-mean, layer-mean, head-mean, quantile:Q or a number."),
    direction: str = typer.Option("dep2head", help="SAP: dep2head, head2dep or max."),
    keep_punct: bool = typer.Option(False, "--keep-punct", help="SAP: count punct arcs too."),
    layer_fraction: float = typer.Option(1.0, help="Remove a layer's whole attention block once this fraction of its heads is pruned."),
    calib_size: int = typer.Option(512, help="Calibration examples sampled (seeded) from train."),
    seed: int = typer.Option(0, help="Seed for the calibration sample and random methods."),
    max_length: int = typer.Option(128, help="Max tokens per input."),
    batch_size: int = typer.Option(32, help="Batch size for attention statistics."),
    parser: str = typer.Option("en_core_web_sm", help="spaCy pipeline for dependency parses."),
    parses: Optional[Path] = typer.Option(None, help="CoNLL-U file: calibrate on its sentences with their gold trees instead of spaCy's parses of TASK (evaluation stays on TASK)."),
    glue_dir: Optional[Path] = typer.Option(None, help="GLUE folder (glue_data layout); default $SYNPRUNE_GLUE_DIR or ../shared/data/glue."),
    text_col: Optional[str] = typer.Option(None, help="Data file: text column."),
    text_pair_col: Optional[str] = typer.Option(None, help="Data file: second text column."),
    label_col: Optional[str] = typer.Option(None, help="Data file: label column."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Prune attention heads of MODEL on TASK and write OUT/result.json."""
    from ..pipeline import prune as run_prune

    set_quiet(quiet)
    result = run_prune(model, task=str(task), sparsity=sparsity, out=out, glue_dir=glue_dir, text_col=text_col,
                       text_pair_col=text_pair_col, label_col=label_col, method=method, k=k, threshold=threshold,
                       direction=direction, keep_punct=keep_punct, layer_fraction=layer_fraction,
                       calib_size=calib_size, seed=seed, max_length=max_length, batch_size=batch_size, parser=parser,
                       parses_file=parses)
    print_summary(result)
    console.print(f"wrote {out / 'result.json'}")
