"""Print the figures the README quotes in prose, from the run folders the README's commands write.

    synprune prune   --task stsb --sparsity 0.5 --out runs/sap50
    synprune explain --task stsb --out runs/explain --result runs/sap50/result.json
    synprune sweep   --out runs/sweep
    python benchmarks/readme_figures.py --explain runs/explain --sweep runs/sweep

From an explain folder: what SAP's kept heads retain (retention.json), the rank correlation of SAP's penalty
with attention entropy and with syntactic alignment over all heads (heads.json), and in which layers the best
head per relation lies (best_heads.md's rows, heads.json). From a sweep folder: how the wall time splits
between the +cf runs and the others (results.csv's `seconds`).
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

from scipy.stats import spearmanr


def explain_figures(folder: Path, min_arcs: int = 10) -> list[str]:
    heads = json.loads((folder / "heads.json").read_text())
    rows = heads["heads"]
    penalty = [h["sap_penalty"] for h in rows]
    lines = [f"SAP penalty vs attention entropy, Spearman over {len(rows)} heads: "
             f"{spearmanr(penalty, [h['entropy'] for h in rows])[0]:+.2f}",
             f"SAP penalty vs syntactic alignment, Spearman: "
             f"{spearmanr(penalty, [h['syntactic_alignment'] for h in rows])[0]:+.2f}"]
    retention = folder / "retention.json"
    if retention.is_file():
        for label, r in json.loads(retention.read_text()).items():
            lines.append(f"{label}: kept heads hold {r['strong_attention_mass']['kept_share']:.1%} of the strong "
                         f"attention and {r['syntactic_alignment']['kept_share']:.1%} of the syntactic alignment "
                         f"({r['heads_kept']} heads kept)")
    best = folder / "best_heads.md"
    if best.is_file():
        layers = Counter()
        for line in best.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 3 and ":" in cells[2] and cells[1].isdigit() and int(cells[1]) >= min_arcs:
                layers[int(cells[2].split(":")[0])] += 1
        total = sum(layers.values())
        lines.append(f"best head per relation (>= {min_arcs} arcs): {total} relations; by layer "
                     + ", ".join(f"{l}: {n}" for l, n in sorted(layers.items())))
    return lines


def sweep_figures(folder: Path) -> list[str]:
    with open(folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cf = [float(r["seconds"]) for r in rows if r["cf"] == "True"]
    other = [float(r["seconds"]) for r in rows if r["cf"] != "True"]
    total = sum(cf) + sum(other)
    return [f"{len(rows)} runs, {total:.0f} s in runs: the {len(cf)} +cf runs took {sum(cf):.0f} s "
            f"({sum(cf) / total:.0%}), the other {len(other)} runs {sum(other):.0f} s"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--explain", type=Path, help="folder written by `synprune explain ... --result ...`")
    ap.add_argument("--sweep", type=Path, help="folder written by `synprune sweep`")
    args = ap.parse_args(argv)
    if args.explain:
        print("\n".join(explain_figures(args.explain)))
    if args.sweep:
        print("\n".join(sweep_figures(args.sweep)))


if __name__ == "__main__":
    main()
