"""How a command ends when something goes wrong: one line on stderr and a status, never a traceback.

Bad input (:class:`UserError`) exits 2, Ctrl-C exits 130 (128 + SIGINT, as a shell reports it), and a
reader that closed the pipe (``robustmed … | head -1``) ends the command quietly with 141 (128 + SIGPIPE).
"""
from __future__ import annotations

import os
import sys
from typing import Callable

USER_ERROR, INTERRUPTED, BROKEN_PIPE = 2, 130, 141


class UserError(Exception):
    """Bad input from the user (unknown name, malformed file, bad ε string).

    Raised before anything is written, so the results store never holds a half-finished run because of a typo.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a run's work units were being computed: how many of the planned units are stored.

    A :class:`KeyboardInterrupt`, so code that cleans up on Ctrl-C treats it as one.
    """

    def __init__(self, saved: int, total: int):
        super().__init__(saved, total)
        self.saved, self.total = saved, total

    def __str__(self) -> str:
        return f"interrupted: {self.saved} of {self.total} units saved; rerun the same command to resume"


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _silence_stdout() -> None:
    """Point stdout at /dev/null: the interpreter flushes it again on exit, which would raise once more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured): nothing left to flush
        pass


def exit_status(prog: str, entry: Callable[[], int | None]) -> int:
    """Run an entry point (the CLI, a benchmark script) so that bad input, Ctrl-C and a closed pipe end as
    one line (or none) and a status; anything else is a bug and keeps its traceback.

    Status 141 for a closed pipe is what a shell reports for a writer killed by SIGPIPE (``yes | head -1``),
    so ``set -o pipefail`` scripts see robustmed as they see the standard tools: the output was cut short.
    """
    try:
        status = entry() or 0
        sys.stdout.flush()  # a pipe closed early fails here, not at interpreter exit where it cannot be caught
        return status
    except UserError as exc:
        _say(f"{prog}: error: {exc}")
        return USER_ERROR
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE
    except KeyboardInterrupt as exc:
        _say(str(exc) if isinstance(exc, Interrupted) else "interrupted")
        return INTERRUPTED
