"""Progress of long steps on stderr (rich), silent with ``--quiet``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console


class Progress:
    """Prints one status line per step on stderr; ``quiet`` prints nothing."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def step(self, message: str) -> Iterator[None]:
        if self.quiet:
            yield
            return
        with self.console.status(f"[bold]edgec[/]: {message} ..."):
            yield
        self.console.print(f"[bold]edgec[/]: {message} [green]done[/]")

    def note(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[bold]edgec[/]: {message}")

    def warn(self, message: str) -> None:
        # Warnings show even with --quiet: they say something the user must know.
        self.console.print(f"edgec: warning: {message}", markup=False)

    def bar(self, description: str, total: int) -> Callable[..., None]:
        """Shows a progress bar for ``total`` items; returns the function that advances it,
        ``advance(done, status="")`` (the status, e.g. a training loss, shows after the bar).

        The bar disappears when it reaches ``total``.
        """
        if self.quiet or total <= 0:
            return lambda done, status="": None
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        bar = Bar(
            f"[bold]edgec[/]: {description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=True,
        )
        task = bar.add_task(description, total=total, status="")
        bar.start()

        def advance(done: int, status: str = "") -> None:
            bar.update(task, advance=done, **({"status": status} if status else {}))
            if bar.tasks[0].completed >= total:
                bar.stop()

        return advance
