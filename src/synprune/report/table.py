"""The sweep's summary table (methods as rows, sparsities as columns, dense first), built once from the
result rows and rendered both in the terminal (rich) and in report.html, so the two always agree."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

from rich.table import Table

from synprune.data.metrics import best, direction_text

DENSE = "dense (unpruned)"


def spec_label(row: dict) -> str:
    """A row's method spec: `sap`, `sap+cf`."""
    return row["method"] + ("+cf" if _truthy(row["cf"]) else "")


def group_label(row: dict) -> str:
    """A method spec with its grid variant: `sap`, `sap+cf`, `sap (k=3)`."""
    return f"{spec_label(row)} ({row['variant']})" if row.get("variant") else spec_label(row)


def _truthy(value) -> bool:
    return value is True or str(value).lower() == "true"


@dataclass
class Cell:
    """Metric over the seeds of one method at one sparsity: mean, sample sd (n >= 2), min and max."""

    values: list[float]
    best: bool = False

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self) -> str:
        return f"{self.mean:.2f}" if self.sd is None else f"{self.mean:.2f} ± {self.sd:.2f} (n={len(self.values)})"


@dataclass
class SummaryTable:
    metric: str
    sparsities: list[float]
    heads: list[str]  # heads pruned at each sparsity (one number, or a range if methods differ)
    dense: float
    rows: list[tuple[str, list[Cell | None]]]

    def headers(self) -> list[str]:
        return ["method"] + [f"s={s:g} ({h} heads)" for s, h in zip(self.sparsities, self.heads)]

    def best(self) -> list[tuple[float, list[str], float]]:
        """(sparsity, best methods, their mean) per column: the plain verdict of the sweep."""
        out = []
        for j, s in enumerate(self.sparsities):
            winners = [(label, cells[j].mean) for label, cells in self.rows if cells[j] is not None and cells[j].best]
            if winners:
                out.append((s, [w for w, _ in winners], winners[0][1]))
        return out

    def rich(self, title: str = "") -> Table:
        table = Table(title=title or f"{self.metric} ({direction_text(self.metric)}; best pruned per column in bold)")
        for i, h in enumerate(self.headers()):
            table.add_column(h, justify="left" if i == 0 else "right")
        table.add_row(DENSE, *[f"{self.dense:.2f}"] * len(self.sparsities), style="dim")
        for label, cells in self.rows:
            table.add_row(label, *["-" if c is None else f"[bold]{c.text()}[/]" if c.best else c.text() for c in cells])
        return table


def summarize(rows: Sequence[dict]) -> SummaryTable:
    """Group rows by method spec (and grid variant) and sparsity; mark the best mean of each column (the
    highest, or the lowest for a lower-is-better metric such as perplexity)."""
    sparsities = sorted({float(r["sparsity"]) for r in rows})
    groups: dict[str, dict[float, list[float]]] = {}
    heads: dict[float, set[int]] = {s: set() for s in sparsities}
    for r in rows:
        groups.setdefault(group_label(r), {}).setdefault(float(r["sparsity"]), []).append(float(r["pruned"]))
        heads[float(r["sparsity"])].add(int(r["n_pruned"]))
    table_rows = [(label, [Cell(by_s[s]) if s in by_s else None for s in sparsities]) for label, by_s in groups.items()]
    for j in range(len(sparsities)):
        cells = [cells[j] for _, cells in table_rows if cells[j] is not None]
        top = best(rows[0]["metric_name"], [c.mean for c in cells])
        for c in cells:
            c.best = c.mean == top
    head_text = [str(min(h)) if len(h) == 1 else f"{min(h)}-{max(h)}" for h in (heads[s] for s in sparsities)]
    return SummaryTable(rows[0]["metric_name"], sparsities, head_text, float(rows[0]["dense"]), table_rows)
