"""Run ``sessionpipe`` and SIGKILL it at a chosen point: ``python crash_wrapper.py POINT -- ARGS…``.

Test-only: the product has no kill switches. A point is ``fn:<module>:<attr>:<n>`` (die when that
function is called for the n-th time, before it runs), ``fn-after:<module>:<attr>:<n>`` (die as that
call returns), ``sql:<PREFIX>:<n>`` (die before the n-th
statement starting with PREFIX), ``sql-after:<PREFIX>:<n>`` (die right after it returns) or
``sql-during:<PREFIX>:<n>`` (die 1 ms into it, from another thread, while DuckDB works).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from collections import Counter
from typing import Any


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def patch_function(module_name: str, attr: str, nth: int, *, after: bool = False) -> None:
    owner: Any = importlib.import_module(module_name)
    path = attr.split(".")
    for part in path[:-1]:
        owner = getattr(owner, part)
    original = getattr(owner, path[-1])
    calls = Counter[str]()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == nth and not after:
            die()
        result = original(*args, **kwargs)
        if calls["n"] == nth:
            die()
        return result

    setattr(owner, path[-1], wrapper)


class KillingConnection:
    """A DuckDB connection that dies around the n-th statement with a given prefix."""

    def __init__(self, con: Any, mode: str, prefix: str, nth: int) -> None:
        self._con, self._mode, self._prefix, self._nth = con, mode, prefix.upper(), nth
        self._seen = 0

    def execute(self, sql: str, *args: Any) -> Any:
        hit = sql.lstrip().upper().startswith(self._prefix)
        if hit:
            self._seen += 1
        hit = hit and self._seen == self._nth
        if hit and self._mode == "sql":
            die()
        if hit and self._mode == "sql-during":
            threading.Timer(0.001, die).start()
        result = self._con.execute(sql, *args)
        if hit and self._mode == "sql-after":
            die()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def __enter__(self) -> KillingConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._con.close()


def main() -> int:
    point, separator, *args = sys.argv[1:]
    assert separator == "--", "usage: crash_wrapper.py POINT -- ARGS…"
    kind, rest = point.split(":", 1)
    if kind in ("fn", "fn-after"):
        module_name, attr, nth = rest.rsplit(":", 2)
        patch_function(module_name, attr, int(nth), after=kind == "fn-after")
    else:
        prefix, nth = rest.rsplit(":", 1)
        from sessionpipe_runner import store

        real_connect = store.connect

        def connect(*c_args: Any, **c_kwargs: Any) -> Any:
            return KillingConnection(real_connect(*c_args, **c_kwargs), kind, prefix, int(nth))

        store.connect = connect  # type: ignore[assignment]
    from sessionpipe_runner.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
