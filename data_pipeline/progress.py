"""Progress bars (rich) on stderr, silenced by `--quiet`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr_console = Console(stderr=True)


@contextmanager
def progress_bar(total: float, description: str, quiet: bool = False) -> Iterator:
    """Yield `advance(amount=1, status=None)`; draws a bar on stderr unless `quiet`.

    A `status` (for example the current loss) is shown after the description.
    """
    if quiet:
        yield lambda amount=1, status=None: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr_console, transient=False) as progress:
        task = progress.add_task(description, total=total)

        def advance(amount: float = 1, status: str | None = None) -> None:
            label = description if status is None else f"{description} {status}"
            progress.update(task, advance=amount, description=label)

        yield advance
