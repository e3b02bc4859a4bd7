"""The ``sessionpipe`` console script (and ``python -m sessionpipe_runner``).

It records SIGTERM before importing anything heavy (see :mod:`.signals`), then hands over to the
command line.
"""

from __future__ import annotations

from collections.abc import Sequence

from sessionpipe_runner import signals


def main(argv: Sequence[str] | None = None) -> int:
    signals.record_early()
    from sessionpipe_runner.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
