"""`synprune explain`: what each head attends to, next to its SAP penalty, and what a pruning kept."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..cli import app
from ..progress import console, set_quiet


def print_best_heads(rows: list[dict]) -> None:
    table = Table(title="Best head per relation (0-indexed layer:head)")
    for col, justify in (("relation", "left"), ("arcs", "right"), ("head", "right"), ("direction", "left"),
                         ("accuracy", "right"), ("baseline", "right")):
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(r["relation"], str(r["arcs"]), f"{r['layer']}:{r['head']}", r["direction"], f"{r['accuracy']:.3f}",
                      f"{r['baseline_accuracy']:.3f} ({r['baseline_offset']:+d})")
    console.print(table)


def print_retention(retention: dict[str, dict]) -> None:
    table = Table(title="What the kept heads retain (share of the whole model's total)")
    for col in ("result", "heads kept", "strong attention kept", "syntactic alignment kept",
                "strong attn per head kept/pruned", "alignment per head kept/pruned"):
        table.add_column(col, justify="right")

    def ratio(d: dict) -> str:
        return f"{d['kept_per_head'] / d['pruned_per_head']:.2f}" if d["kept_per_head"] is not None and d["pruned_per_head"] else "-"

    def share(d: dict) -> str:
        return "-" if d["kept_share"] is None else f"{d['kept_share']:.1%}"

    for label, r in retention.items():
        s, a = r["strong_attention_mass"], r["syntactic_alignment"]
        table.add_row(label, f"{r['heads_kept']} ({r['heads_kept_share']:.0%})", share(s), share(a), ratio(s), ratio(a))
    console.print(table)


@app.command()
def explain(
    model: Optional[str] = typer.Option(None, help="Model folder or hub id (default: the bundled all-MiniLM-L6-v2)."),
    task: str = typer.Option("stsb", help="GLUE task or .csv/.tsv/.jsonl file whose calibration sample is explained."),
    out: Path = typer.Option(Path("runs/explain"), help="Output folder."),
    parses: Optional[Path] = typer.Option(None, help="CoNLL-U file: explain on its sentences with their gold trees instead of TASK parsed by spaCy."),
    result: Optional[List[Path]] = typer.Option(None, help="A result.json of `synprune prune` (repeatable): mark its pruned heads and measure what the kept heads retain."),
    heads: Optional[str] = typer.Option(None, help="Heads for the attention maps, LAYER:HEAD 0-indexed, e.g. 2:3,4:1 (default: best head of the 3 most frequent relations)."),
    sentences: int = typer.Option(3, help="Sentences drawn in the attention maps (0: none)."),
    min_arcs: int = typer.Option(10, help="Relations with fewer arcs are left out of the tables and heat maps."),
    k: int = typer.Option(5, help="SAP: number of top dependency labels (for the penalty shown)."),
    threshold: str = typer.Option("global-mean", help="SAP threshold (also the bar for 'strong' attention)."),
    direction: str = typer.Option("dep2head", help="SAP direction for the penalty shown."),
    keep_punct: bool = typer.Option(False, "--keep-punct", help="SAP: count punct arcs (and in syntactic alignment)."),
    calib_size: int = typer.Option(512, help="Calibration examples (seeded sample of train, or of the CoNLL-U sentences)."),
    seed: int = typer.Option(0, help="Seed of the calibration sample."),
    max_length: int = typer.Option(128, help="Max tokens per input."),
    batch_size: int = typer.Option(32, help="Batch size for attention statistics."),
    parser: str = typer.Option("en_core_web_sm", help="spaCy pipeline for dependency parses."),
    glue_dir: Optional[Path] = typer.Option(None, help="GLUE folder (glue_data layout)."),
    text_col: Optional[str] = typer.Option(None, help="Data file: text column."),
    text_pair_col: Optional[str] = typer.Option(None, help="Data file: second text column."),
    label_col: Optional[str] = typer.Option(None, help="Data file: label column."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Write, for every head, its accuracy per dependency relation, attention profile and SAP penalty to OUT."""
    from ..explain import explain_model

    set_quiet(quiet)
    _, written = explain_model(model, task, out, parses_file=parses, glue_dir=glue_dir, text_col=text_col,
                               text_pair_col=text_pair_col, label_col=label_col, results=result or (), heads=heads,
                               sentences=sentences, min_arcs=min_arcs, k=k, threshold=threshold, direction=direction,
                               keep_punct=keep_punct, calib_size=calib_size, seed=seed, max_length=max_length,
                               batch_size=batch_size, parser=parser)
    print_best_heads(written["best_heads"])
    if written.get("retention"):
        print_retention(written["retention"])
    console.print(f"wrote {out}/heads.json, relations.csv, best_heads.md, heatmaps*.png, attention_maps.png"
                  + (", retention.json" if written.get("retention") else ""))
