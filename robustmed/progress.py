"""Rich progress bars on stderr (stdout stays clean for --json)."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable

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


# Set by an executor around one work unit: told the fraction of the unit's attack work done so far, so its
# bar moves with the attack's steps instead of jumping once per unit.
_listener: ContextVar[Callable[[float], None] | None] = ContextVar("robustmed_unit_progress", default=None)


@contextmanager
def listening(callback: Callable[[float], None]):
    """Within the block, attack work reports its completed fraction (0 to 1) to ``callback``."""
    token = _listener.set(callback)
    try:
        yield
    finally:
        _listener.reset(token)


class Meter:
    """Work done in one harness call, in samples: whole chunks as they finish, and inside a chunk the share
    of its expected model passes already made (attacks with a known step count)."""

    def __init__(self, total: int):
        self.total, self.done, self.partial = max(total, 1), 0.0, 0.0
        self.listener = _listener.get()

    def commit(self, samples: int) -> None:
        self.done, self.partial = self.done + samples, 0.0
        self._report()

    def provisional(self, samples: float, ceiling: int) -> None:
        self.partial = min(self.partial + samples, ceiling)
        self._report()

    def _report(self) -> None:
        if self.listener is not None:
            self.listener(min(1.0, (self.done + self.partial) / self.total))
