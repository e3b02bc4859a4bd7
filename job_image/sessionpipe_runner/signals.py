"""SIGTERM, from the process's first moments to the end of a run.

Before the run: importing DuckDB and the rest takes a quarter of a second; a SIGTERM in that time
would kill the process with Python's default action, before the run installs its own handler, and
the operator would get no summary. The console script calls :func:`record_early` first, before any
heavy import; :func:`sessionpipe_runner.runner.run` then ends at once with a summary if a signal
was recorded.

During the run: :func:`sigterm_raises` turns SIGTERM into :class:`Terminated`, and
:class:`Sigterm` keeps the record that counts (see its docstring).

This module imports nothing heavy, on purpose.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_received = False
_installed = False


def _note(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = True


def record_early() -> None:
    """From now on, remember SIGTERM instead of dying of it."""
    global _installed
    signal.signal(signal.SIGTERM, _note)
    _installed = True


def received_early() -> bool:
    """Whether SIGTERM arrived while :func:`record_early` was in force."""
    return _received


def stop_recording() -> None:
    """For commands that are not runs: SIGTERM kills again, and one that already arrived does so now."""
    global _installed
    if not _installed:
        return
    _installed = False
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _received:
        os.kill(os.getpid(), signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM arrived: roll back, release the lease, report, exit."""


class Sigterm:
    """Whether SIGTERM arrived during the run.

    The handler raises :class:`Terminated`, but when the signal lands while DuckDB runs a
    statement, DuckDB turns that exception into its own ``Query interrupted`` error, an ordinary
    ``Exception`` that would fail a session or the run instead. So the flag is the record that
    counts: the runner checks it wherever it catches errors and between sessions.
    """

    def __init__(self) -> None:
        self.received = False

    def check(self) -> None:
        """Raise :class:`Terminated` if SIGTERM arrived, whatever became of the handler's exception."""
        if self.received:
            raise Terminated()


@contextmanager
def sigterm_raises(sigterm: Sigterm) -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` in the main thread for the duration of a run."""

    def handler(signum: int, frame: FrameType | None) -> None:
        sigterm.received = True
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
