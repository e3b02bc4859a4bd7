"""The operator-wide stale check: time-based conditions of every processor, from memory, each minute.

``Stale`` changes with time alone, with no event to react to. One loop for the whole operator reads
every processor from the kopf index (no API reads), recomputes its conditions for now, and writes
only the processors whose conditions changed. A kopf timer would do it per processor, but would add
a finalizer to every SessionProcessor.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from sessionpipe_operator import metrics
from sessionpipe_operator import status as status_rules
from sessionpipe_operator.objects import SessionProcessor
from sessionpipe_operator.state import OperatorState, index_value
from sessionpipe_operator.status_writer import strip_nulls, update_status

#: How often the loop re-evaluates time-based conditions (Stale). The shortest schedule is one
#: minute and Stale needs two periods, so a minute is precise enough.
STALE_CHECK_SECONDS = 60.0


def check_time_based_conditions(state: OperatorState) -> None:
    """One pass: export each processor's last success, and write the conditions that time changed."""
    if state.bodies is None:
        return
    now = datetime.now(UTC)
    for key in list(state.bodies):
        known = index_value(state.bodies, key)
        if known is None:
            continue
        processor = SessionProcessor.parse(known)
        last_success = status_rules.parse_time(processor.status.get("lastSuccessfulTime"))
        if last_success is not None and processor.spec is not None:
            metrics.LAST_SUCCESS.labels(
                namespace=key[0], sessionprocessor=key[1], processor=processor.spec.processor
            ).set(last_success.timestamp())
        fresh = _recomputed(processor, copy.deepcopy(processor.status), now)
        if strip_nulls(fresh.get("conditions")) == strip_nulls(processor.status.get("conditions")):
            continue
        update_status(state, key[0], key[1], lambda cr, current: _recomputed(SessionProcessor.parse(cr), current))


def _recomputed(processor: SessionProcessor, status: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    invalid = status_rules.current_invalid(status)
    return status_rules.with_conditions(status, processor.created, processor.spec, now or datetime.now(UTC), invalid)
