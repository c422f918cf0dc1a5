"""`synprune explain`: what each head attends to, next to its SAP penalty, and what a pruning kept."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..cli import app
from ._options import DataOptions, SapOptions, option_sets
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
    """Kept heads' share of the model's strong attention and syntactic alignment, and per head kept vs pruned."""
    table = Table(title="What the kept heads retain")
    for col in ("result", "heads kept", "strong attn", "alignment", "strong/head k:p", "align/head k:p"):
        table.add_column(col, justify="right", overflow="fold")

    def ratio(d: dict) -> str:
        return f"{d['kept_per_head'] / d['pruned_per_head']:.2f}" if d["kept_per_head"] is not None and d["pruned_per_head"] else "-"

    def share(d: dict) -> str:
        return "-" if d["kept_share"] is None else f"{d['kept_share']:.1%}"

    for label, r in retention.items():
        s, a = r["strong_attention_mass"], r["syntactic_alignment"]
        table.add_row(label, f"{r['heads_kept_share']:.0%}", share(s), share(a), ratio(s), ratio(a))
    console.print(table)
    console.print("strong attn / alignment: the kept heads' share of all heads' total; k:p: mean per kept head / mean per pruned head")


@app.command()
@option_sets
def explain(
    data: DataOptions,
    out: Path = typer.Option(Path("runs/explain"), help="Output folder."),
    parses: Optional[Path] = typer.Option(None, help="CoNLL-U file: use its sentences with their gold trees instead of TASK parsed by spaCy."),
    result: Optional[List[Path]] = typer.Option(None, help="A result.json of `synprune prune` (repeatable): mark its pruned heads and measure what the kept heads retain."),
    heads: Optional[str] = typer.Option(None, help="Heads for the attention maps, LAYER:HEAD 0-indexed, e.g. 2:3,4:1 (default: best head of the 3 most frequent relations)."),
    sentences: int = typer.Option(3, help="Sentences drawn in the attention maps (0: none)."),
    min_arcs: int = typer.Option(10, help="Relations with fewer arcs are left out of the tables and heat maps."),
    sap: SapOptions = SapOptions(),
) -> None:
    """Write, for every head, its accuracy per dependency relation, attention profile and SAP penalty to OUT."""
    from synprune.explain.heads import explain_model

    set_quiet(data.quiet)
    _, written = explain_model(data.model, str(data.task), out, parses_file=parses, **data.columns(), results=result or (),
                               heads=heads, sentences=sentences, min_arcs=min_arcs, **data.config(), **sap.config())
    print_best_heads(written["best_heads"])
    if written.get("retention"):
        print_retention(written["retention"])
    console.print(f"wrote {out}/heads.json, relations.csv, best_heads.md, heatmaps*.png, attention_maps.png"
                  + (", retention.json" if written.get("retention") else ""))
