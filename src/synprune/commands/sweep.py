"""`synprune sweep`: many methods, budgets and seeds under one protocol; results table, plots, report.html."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable, TypeVar

import typer

from ..cli import app
from ..errors import SynpruneError
from ..progress import console, set_quiet
from synprune.run.sweep import DEFAULT_METHODS, DEFAULT_SEEDS, DEFAULT_SPARSITIES
from ._options import CfOptions, DataOptions, SapOptions, UnitOptions, option_sets

T = TypeVar("T")


def split_list(text: str, convert: Callable[[str], T], option: str) -> list[T]:
    """A comma-separated option value as a list, with a one-line error naming the bad item."""
    values = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        try:
            values.append(convert(item))
        except ValueError:
            raise SynpruneError(f"{option}: {item!r} is not a valid {convert.__name__}; give a comma-separated list") from None
    return values


def _joined(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def interrupted(e: KeyboardInterrupt, out: Path) -> None:
    """Ctrl-C: one line (no traceback) with the runs kept and the command that resumes; exit status 130."""
    from ..cli import invocation

    finished = getattr(e, "finished", None)
    kept = (f"{finished} of {e.total} runs finished and are kept in {out / 'runs'}" if finished
            else "no run had finished")
    typer.secho(f"interrupted: {kept}; resume with: {invocation()}", err=True, fg="yellow")
    raise typer.Exit(130)


@app.command()
@option_sets
def sweep(
    data: DataOptions,
    methods: Annotated[str, typer.Option(help="Comma-separated methods; NAME+cf filters NAME's ranking with "
                                              "Candidate Filtering.")] = ",".join(DEFAULT_METHODS),
    sparsities: Annotated[str, typer.Option(help="Comma-separated fractions of heads to remove.")] = _joined(DEFAULT_SPARSITIES),
    seeds: Annotated[str, typer.Option(help="Seeds for the methods that depend on the seed (random); the others run "
                                            "once with --seed.")] = _joined(DEFAULT_SEEDS),
    grid: Annotated[list[str], typer.Option(help="KEY=V1,V2,... (repeatable): every combination, for the methods whose "
                                                 "result depends on KEY (e.g. --grid k=1,2,3 reruns SAP only).")] = [],  # noqa: B006
    out: Annotated[Path, typer.Option(help="Output folder: results.csv, results.json, runs/, plots/, report.html.")] = Path("runs/sweep"),
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the plots and report.html.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute run folders in OUT that hold other "
                                            "options, model or data (finished matching runs are always reused).")] = False,
    executor: Annotated[str, typer.Option(help="Where runs are computed: pool (this machine's two processes, sharing "
                                               "one calibration), inline, or ray / ray:ADDRESS (one Ray task per run; "
                                               "needs `pip install 'synprune[ray]'`).")] = "pool",
    sap: SapOptions = SapOptions(),
    cf: CfOptions = CfOptions(),
    unit_options: UnitOptions = UnitOptions(),
) -> None:
    """Compare pruning methods on one model and task under one protocol, and write a report."""
    from synprune.run.evalpool import prestart, release_early

    prestart()  # the evaluation worker's process starts importing while this one loads the model and data
    try:
        from synprune.run import sweep as S
        from ..report import summarize

        set_quiet(data.quiet)
        result = S.sweep(data.model, task=str(data.task), methods=split_list(methods, str, "--methods"),
                         sparsities=split_list(sparsities, float, "--sparsities"), seeds=split_list(seeds, int, "--seeds"),
                         grid=S.parse_grid(grid), out=out, report=not no_report, overwrite=overwrite, executor=executor, **data.columns(),
                         **data.config(), **sap.config(), **cf.config(), **unit_options.config())
    except KeyboardInterrupt as e:
        interrupted(e, out)
    finally:
        release_early()
    summary = result.summary
    console.print(summarize(result.rows).rich(
        f"{summary['metric']['name']} of {summary['model']['name']} on {summary['task']['name']} "
        f"({summary['metric']['split']}); best pruned per column in bold"))
    plots = [name for name in result.files if name.startswith("plots/")]
    written = ", ".join(str(out / name) for name in result.files if name not in plots)
    console.print(f"{len(result.rows)} runs in {summary['timings']['total']:.0f} s; wrote {written}, "
                  f"{len(plots)} plots in {out / 'plots'} and one result.json per run in {out / 'runs'}")
    console.print(result.breakdown, highlight=False)
