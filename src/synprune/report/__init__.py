"""The sweep's report: figures (plots.py), the summary table (table.py) and report.html (html.py), rebuilt
from what a sweep wrote (DIR/results.json and DIR/runs/*/result.json), so it can be redrawn at any time."""
from __future__ import annotations

import json
from pathlib import Path

from ..io import atomic_write_bytes, atomic_write_text
from . import plots as P
from .html import Plot, render
from .table import summarize

__all__ = ["write_report", "summarize"]


def _plots(summary: dict, results: dict[str, dict]) -> list[Plot]:
    rows, sweep = summary["rows"], summary["sweep"]
    sparsities = sweep["sparsities"]
    middle = sparsities[len(sparsities) // 2]
    out = [
        Plot("metric_vs_sparsity", f"{rows[0]['metric_name']} against sparsity",
             f"One line per method; dotted black line: the dense model; dashed lines: methods with Candidate "
             f"Filtering; shaded bands: {P.SPREAD}.", P.metric_vs_sparsity(rows)),
        Plot("head_scores", f"Head scores at sparsity {middle:g}",
             "Each method's scores per layer and head, in its own units and colour scale (for some methods high "
             "means prunable, for others low); red crosses mark the heads it pruned. Seeded methods: lowest seed.",
             P.head_scores(rows, results, middle)),
    ]
    ranked = [results[r["run"]] for r in rows if "dependency_ranking" in results[r["run"]]]
    if ranked:
        base = next((res for res in ranked if res["config"]["k"] == sweep["config"]["k"]), ranked[0])
        k = base["config"]["k"]
        out.append(Plot("dependency_ranking", f"Dependency ranking (k={k})",
                        f"Arcs per dependency label in the calibration parses (bars, most frequent first); the number "
                        f"above each bar is its SAP weight; orange: the top-{k} labels, whose arcs are penalised when "
                        f"attended below the threshold (the others when attended above it).", P.dependency_ranking(base)))
    for key in sweep["grid"]:
        out.append(Plot(f"grid_{key}", f"Effect of {key}",
                        f"{rows[0]['metric_name']} against {key}, one panel per sparsity; dotted lines: methods that "
                        f"do not depend on {key}; bands: {P.SPREAD}.", P.grid_effect(rows, sweep["grid"], key)))
    return out


def write_report(out_dir: str | Path) -> dict[str, Path]:
    """Draw every plot into DIR/plots/*.png and write DIR/report.html, from DIR/results.json and the runs."""
    out = Path(out_dir)
    summary = json.loads((out / "results.json").read_text())
    results = {r["run"]: json.loads((out / r["run"] / "result.json").read_text()) for r in summary["rows"]}
    plots = _plots(summary, results)
    files = {f"plots/{p.name}.png": atomic_write_bytes(out / "plots" / f"{p.name}.png", p.png) for p in plots}
    files["report.html"] = atomic_write_text(out / "report.html", render(summary, summarize(summary["rows"]), plots))
    return files
