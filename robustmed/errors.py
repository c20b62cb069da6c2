"""User-facing errors: the CLI prints them as one line and exits with status 2."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user (unknown name, malformed file, bad ε string).

    Raised before anything is written, so the results store never holds a
    half-finished run because of a typo.
    """


def exit_status(prog: str, entry: Callable[[], int | None]) -> int:
    """Run an entry point (the CLI, a benchmark script) so that bad input ends as one line on
    stderr and status 2, never a traceback; anything else is a bug and keeps its traceback."""
    try:
        return entry() or 0
    except UserError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 2
