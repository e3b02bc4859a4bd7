"""SIGTERM before the run begins: recorded from the process's first moments, honoured by the run.

Importing DuckDB and the rest takes a quarter of a second; a SIGTERM in that time would kill the
process with Python's default action, before the run installs its own handler, and the operator
would get no summary. The console script installs :func:`record` first, before any heavy import;
:func:`sessionpipe_runner.runner.run` then ends at once with a summary if a signal was recorded.
This module imports nothing heavy, on purpose.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

_received = False
_installed = False


def _note(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = True


def record() -> None:
    """From now on, remember SIGTERM instead of dying of it."""
    global _installed
    signal.signal(signal.SIGTERM, _note)
    _installed = True


def received() -> bool:
    """Whether SIGTERM arrived while :func:`record` was in force."""
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
