"""Polling for a condition: the one wait of the control plane and of the tests that use it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimedOut(TimeoutError, AssertionError):
    """A wait ran out of time.

    Both a :class:`TimeoutError` (what the control plane's start-up raises) and an
    :class:`AssertionError` (what a test's wait is: an expectation the cluster did not meet), so
    either kind of handler catches it.
    """


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy, and return that.

    :param timeout: seconds; after them :class:`WaitTimedOut` names ``what``.
    :param interval: seconds between two calls of ``check``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimedOut(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
