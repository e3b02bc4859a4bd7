"""The ``sessionpipe`` console script (and ``python -m sessionpipe_runner``).

It records SIGTERM before importing anything heavy (see :mod:`.signals`), then hands over to the
command line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from sessionpipe_runner import signals


def main(argv: Sequence[str] | None = None) -> int:
    signals.record_early()
    from sessionpipe_runner.cli import main as cli_main

    return cli_main(argv)


def console() -> NoReturn:
    """The console script: :func:`main`, then an exit without the interpreter's teardown.

    Tearing down what a command loaded (DuckDB's engine, the compiled module, every module's
    objects) took 20 ms of each command, a tenth of an incremental run. By the time :func:`main`
    returns, a command has closed its files and its database; what is left to do is what the
    teardown would do for output: flush the logging handlers and the standard streams (a failed
    flush, such as a closed pipe, makes a successful exit code 120, as the interpreter's own does).
    """
    code = main()
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    os._exit(code)


if __name__ == "__main__":
    console()
