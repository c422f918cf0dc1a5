"""report.html: one self-contained page (inline CSS, PNGs as base64 data URIs, no external resources) with
the summary table, every figure, every run, and the sweep's whole configuration."""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from html import escape
from typing import Any, Sequence

from synprune.data.metrics import direction_text
from .table import DENSE, SummaryTable

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #d0d0d0; padding: 0.3em 0.7em; vertical-align: top; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.dense td { color: #666; font-style: italic; background: #fafafa; }
td.best { font-weight: bold; background: #eef6ee; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #e4e4e4; }
figcaption { color: #444; font-size: 0.92em; margin-top: 0.4em; }
code { font-family: Menlo, Consolas, monospace; font-size: 0.88em; }
td code { word-break: break-all; }
td table { margin: 0; }
details summary { cursor: pointer; color: #235; }
"""


@dataclass
class Plot:
    name: str  # file stem under plots/
    title: str
    caption: str
    png: bytes


def _summary_table(t: SummaryTable) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in t.headers())
    body = [f'<tr class="dense"><td>{escape(DENSE)}</td>' + f'<td class="num">{t.dense:.2f}</td>' * len(t.sparsities) + "</tr>"]
    for label, cells in t.rows:
        tds = "".join('<td class="num">-</td>' if c is None else
                      f'<td class="num{" best" if c.best else ""}">{escape(c.text())}</td>' for c in cells)
        body.append(f"<tr><td>{escape(label)}</td>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _verdict(t: SummaryTable) -> str:
    items = [f"<li>sparsity {s:g}: <b>{escape(', '.join(labels))}</b> ({mean:.2f}; dense {t.dense:.2f})</li>"
             for s, labels, mean in t.best()]
    return f"<p>Best pruned model at each sparsity ({escape(t.metric)}, {escape(direction_text(t.metric))}):</p><ul>{''.join(items)}</ul>"


def _value(v: Any) -> str:
    if isinstance(v, dict) and v:
        return _kv_table(v)
    return f"<code>{escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))}</code>"


def _kv_table(d: dict) -> str:
    return "<table>" + "".join(f"<tr><th>{escape(str(k))}</th><td>{_value(v)}</td></tr>" for k, v in d.items()) + "</table>"


def _rows_table(rows: Sequence[dict]) -> str:
    cols = list(rows[0])
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    body = "".join("<tr>" + "".join(f"<td>{escape(fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(f: Plot) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (f'<figure id="{escape(f.name)}"><img alt="{escape(f.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{escape(f.title)}.</b> {escape(f.caption)} (plots/{escape(f.name)}.png)</figcaption></figure>")


def split_words(split: dict) -> tuple[str, str]:
    """A run record's `split` in words: ("1,500 dev examples (3 cut to --max-length)", "512 examples"), for the
    evaluation split(s) and the calibration sample; counts of zero are left out."""
    def cut(key: str) -> str:
        n = split.get(f"{key}_rows_cut")
        return f" ({n:,} cut to --max-length)" if isinstance(n, int) and n > 0 else ""

    evaluation = [f"{n:,} {k.removeprefix('evaluation_')} examples{cut(k)}" for k, n in split.items()
                  if k.startswith("evaluation_") and not k.endswith("_rows_cut") and isinstance(n, int)]
    n = split.get("calibration")
    calibration = f"{n:,} examples{cut('calibration')}" if isinstance(n, int) else "unknown"
    return ", ".join(evaluation) or "unknown", calibration


def render(summary: dict, table: SummaryTable, plots: Sequence[Plot]) -> str:
    """The whole page as one string."""
    model, task, split, sweep = summary["model"], summary["task"], summary["split"], summary["sweep"]
    metric = summary["metric"]
    evaluation, calibration = split_words(split)
    seeded = ", ".join(sweep.get("seeded_methods", [])) or "none"
    config = {
        "sweep": {k: sweep[k] for k in ("methods", "sparsities", "seeds", "seeded_methods", "grid", "runs")},
        "options (every run; grid values and --seeds override)": sweep["config"],
        "model": model, "task": task, "split": split, "versions": summary["versions"], "timings (s)": summary["timings"],
    }
    sections = [
        f"<h1>synprune sweep: {escape(str(model.get('name')))} on {escape(str(task.get('name')))}</h1>",
        f'<p class="sub">{escape(metric["name"])} on {escape(metric["split"])}; evaluation: {escape(evaluation)}; '
        f"calibration: {escape(calibration)}; {sweep['runs']} runs; {summary['timings']['total']:.0f} s in all.</p>",
        "<h2>Results</h2>",
        _summary_table(table),
        f"<p>Cells: {escape(metric['name'])} of the pruned model. Methods that depend on the seed ({escape(seeded)}) "
        "show the mean &plusmn; sample standard deviation over seeds; the others ran once with the base seed. "
        "Bold: best pruned model in each column, whichever method it is.</p>",
        _verdict(table),
        "<h2>Figures</h2>",
        *(_figure(p) for p in plots),
        "<h2>All runs</h2>",
        "<p>seconds: wall time of each run, including the shared work (parses, attention statistics, scores, "
        "dense evaluation) done when a run first needed it.</p>",
        "<details><summary>every row of results.csv (each run's result.json is under runs/)</summary>"
        + _rows_table(summary["rows"]) + "</details>",
        "<h2>Configuration</h2>",
        _kv_table(config),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>synprune sweep: {escape(str(model.get('name')))} on {escape(str(task.get('name')))}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")
