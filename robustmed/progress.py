"""Rich progress bars on stderr (stdout stays clean for --json)."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console

console = Console(stderr=True)


@contextmanager
def progress_bar(enabled: bool = True):
    """A progress bar with ETA; a no-op object when disabled (tests, library use)."""
    if not enabled:
        yield _Silent()
        return
    # imported here: rich.progress takes about 0.1 s, which a run without a bar (workers, --json) need not pay
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=not sys.stderr.isatty()) as bar:
        yield bar


@contextmanager
def status(text: str, enabled: bool = True):
    """A one-line spinner on stderr for work without a count (the pre-flight checks); nothing when disabled."""
    if not enabled:
        yield
        return
    with console.status(text):
        yield


class _Silent:
    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass

    def advance(self, *args, **kwargs):
        pass
