"""`synprune methods`: the registered scoring methods, what each needs and which options change its scores."""
from __future__ import annotations

import inspect

from rich.table import Table

from ..cli import app
from ..progress import console


def method_rows() -> list[dict]:
    """One row per registered method: name, what it needs, its options and the first line of its description."""
    from .. import methods as M

    rows = []
    for name in M.available():
        fn = M.METHODS[name]
        doc = inspect.getdoc(fn) or inspect.getdoc(inspect.getmodule(fn)) or ""
        rows.append({"method": name, "needs": [M.NEED_TEXT[n] for n in M.NEEDS.get(name, ())],
                     "options": sorted(M.USES.get(name, ())), "about": _first_sentence(doc)})
    return rows


ABBREVIATIONS = ("et al.", "e.g.", "i.e.", "cf.", "vs.")


def _first_sentence(doc: str) -> str:
    """The first paragraph's first whole sentence: ends at a full stop followed by a space or the end, outside
    brackets, and not an abbreviation's ("Kwon et al. 2022's recipe", "(He et al. 2024, ...)")."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    depth = 0
    for i, ch in enumerate(paragraph):
        depth += (ch in "([") - (ch in ")]")
        if (ch == "." and depth <= 0 and paragraph[i + 1:i + 2] in ("", " ")
                and not paragraph[:i + 1].endswith(ABBREVIATIONS)):
            return paragraph[:i + 1]
    return paragraph


@app.command("methods")
def methods() -> None:
    """List the pruning methods, what each needs (labels, parser, gradients) and the options it reads."""
    table = Table(title="Scoring methods (any NAME+cf also re-checks its candidates with Candidate Filtering, "
                        "which needs labels)")
    for col in ("method", "needs", "options", "about"):
        table.add_column(col, overflow="fold")
    for r in method_rows():
        table.add_row(r["method"], ", ".join(r["needs"]) or "weights only",
                      " ".join(f"--{o.replace('_', '-')}" for o in r["options"]) or "-", r["about"])
    console.print(table)
