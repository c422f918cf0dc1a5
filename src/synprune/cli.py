"""The `synprune` command. Each subcommand lives in its own module under `synprune.commands` and
registers itself on `app`; this file only loads them and turns `SynpruneError` into a one-line error."""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer

from . import SUMMARY
from .errors import SynpruneError

app = typer.Typer(
    name="synprune",
    help=SUMMARY,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Prune transformer models without retraining (the group's help is SUMMARY)."""
    # A callback keeps `synprune <command>` a command group even while only one command is registered
    # (typer otherwise runs a lone command as the program itself and rejects its name as an argument).


def _load_commands() -> None:
    from . import commands

    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{mod.name}")


def _quiet_transformers() -> None:
    """Our own progress bars say what is happening; transformers' per-load bars only add noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


_INVOKED: list[str] = []  # the arguments of this run of `synprune` (a command that stops can say how to rerun it)


def invocation() -> str:
    """The command line of this run, as it can be pasted back into a shell."""
    import shlex

    return shlex.join(["synprune", *_INVOKED])


def main(argv: list[str] | None = None) -> None:
    # Set before any command imports torch: OpenMP threads that busy-wait make training on a CPU shared
    # with other processes 2-4x slower (measured with 2 threads on 2 busy cores); sleeping ones do not.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _INVOKED[:] = sys.argv[1:] if argv is None else list(argv)
    _load_commands()
    _quiet_transformers()
    try:
        app(args=argv, standalone_mode=True)
    except SynpruneError as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        sys.exit(2)


if __name__ == "__main__":
    # `python -m synprune.cli` runs this file as __main__, but commands register on `synprune.cli.app`
    from synprune.cli import main as _main

    _main()
