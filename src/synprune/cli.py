"""The `synprune` command. Each subcommand lives in its own module under `synprune.commands` and
registers itself on `app`; this file only loads them and turns `SynpruneError` into a one-line error."""
from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from .errors import SynpruneError

app = typer.Typer(
    name="synprune",
    help="Prune transformer attention heads without retraining, compare methods, and explain what was kept.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Prune transformer attention heads without retraining, compare methods, and explain what was kept."""


def _load_commands() -> None:
    from . import commands

    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{mod.name}")


def main(argv: list[str] | None = None) -> None:
    _load_commands()
    try:
        app(args=argv, standalone_mode=True)
    except SynpruneError as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        sys.exit(2)


if __name__ == "__main__":
    # `python -m synprune.cli`: commands register on the imported module's app, not on this __main__ copy
    from synprune.cli import main as _main

    _main()
