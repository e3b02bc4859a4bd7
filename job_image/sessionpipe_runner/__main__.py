"""The ``sessionpipe`` console script (and ``python -m sessionpipe_runner``).

It records SIGTERM before importing anything heavy (see :mod:`.early_sigterm`), then hands over to
the command line.
"""

from __future__ import annotations

from collections.abc import Sequence

from sessionpipe_runner import early_sigterm


def main(argv: Sequence[str] | None = None) -> int:
    early_sigterm.record()
    from sessionpipe_runner.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
