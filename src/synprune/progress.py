"""Rich progress bars for long stages; silent when synprune runs as a library with quiet=True."""
from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


@contextlib.contextmanager
def bar(description: str, total: int | None) -> Iterator:
    """Yield an `advance(n)` callable for a bar labelled `description`."""
    if _state["quiet"]:
        yield lambda n=1: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as p:
        task = p.add_task(description, total=total)
        yield lambda n=1: p.advance(task, n)


def log(message: str) -> None:
    if not _state["quiet"]:
        console.print(message)
