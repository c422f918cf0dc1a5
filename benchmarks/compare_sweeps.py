"""Are two sweeps' results the same? Every run of the first must be in the second with the same pruned heads
and the same dense and pruned metrics (all splits and metrics) to 4 decimals; CF runs also the same decisions.

    python benchmarks/compare_sweeps.py BEFORE_DIR AFTER_DIR [--out FILE]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _runs(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*/result.json"))}


def _cf(folder: Path, run: str) -> list[tuple]:
    path = folder / "runs" / run / "cf_log.jsonl"
    if not path.is_file():
        return []
    return [(e["stage"], e["layer"], e["head"], e["removed"]) for e in map(json.loads, path.read_text().splitlines())]


def _metrics(result: dict) -> dict[str, float]:
    return {f"{kind}/{split}/{name}": value for kind, splits in result["metric"]["all"].items()
            for split, values in splits.items() for name, value in values.items()}


def compare(before: Path, after: Path) -> tuple[bool, list[str]]:
    a, b = _runs(before), _runs(after)
    lines, same = [], bool(a) and a.keys() == b.keys()  # two empty folders are not the same results
    if not same:
        lines.append(f"runs differ: only before {sorted(a.keys() - b.keys())}, only after {sorted(b.keys() - a.keys())}")
    worst = 0.0
    for run in sorted(a.keys() & b.keys()):
        ra, rb = a[run], b[run]
        heads = sorted(map(tuple, ra["pruned_heads"])) == sorted(map(tuple, rb["pruned_heads"]))
        ma, mb = _metrics(ra), _metrics(rb)
        diffs = {k: abs(ma[k] - mb.get(k, float("nan"))) for k in ma}
        metrics = ma.keys() == mb.keys() and all(round(ma[k], 4) == round(mb[k], 4) for k in ma)
        cf = _cf(before, run) == _cf(after, run)
        worst = max([worst, *diffs.values()])
        if not (heads and metrics and cf):
            same = False
            lines.append(f"{run}: pruned heads same {heads}, metrics same to 4 decimals {metrics} "
                         f"(max diff {max(diffs.values(), default=0):.2e}), CF decisions same {cf}")
    lines.append(f"{len(a.keys() & b.keys())} runs compared; largest metric difference {worst:.2e}; "
                 f"identical (pruned heads, CF decisions, metrics to 4 decimals): {same}")
    return same, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    same, lines = compare(args.before, args.after)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
