"""The operator-wide loops (the stale check, the runs' progress): one pass every so often, in a thread."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sessionpipe_operator import metrics
from sessionpipe_operator.state import OperatorState

log = logging.getLogger(__name__)


async def every(seconds: float, check: Callable[[OperatorState], None], state: OperatorState, handler: str) -> None:
    """Run ``check(state)`` every ``seconds``, off the event loop; a failed pass is counted under
    ``handler`` in the reconcile-error metric, logged, and tried again at the next tick."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(check, state)
        except Exception:
            metrics.RECONCILE_ERRORS.labels(handler=handler).inc()
            log.exception("the %s pass failed; trying again in %gs", handler, seconds)
