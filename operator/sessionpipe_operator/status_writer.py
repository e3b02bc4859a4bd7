"""Writing a SessionProcessor's status: read, compute, write, and on a conflict read again.

Several handlers and kopf itself write the same object. Every status write here is an optimistic
read-modify-write: the write carries the resourceVersion that was read, and when someone else wrote
in between the API server answers 409 Conflict; the status is then read and computed afresh, never
patched blindly over a change the computation did not see.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import kopf

from sessionpipe_operator.k8s import ApiError, sessionprocessor_path
from sessionpipe_operator.state import OperatorState

#: Attempts of one optimistic read-modify-write before giving the event back to kopf.
WRITE_ATTEMPTS = 6

#: Computes the new status from the SessionProcessor as read and a copy of its status.
StatusChange = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def update_status(state: OperatorState, namespace: str, name: str, change: StatusChange) -> dict[str, Any] | None:
    """Read the CR, let ``change`` compute its new status, and write it if it differs.

    Optimistic: the write carries the resourceVersion read, and a conflict (kopf or another handler
    wrote meanwhile) re-reads and recomputes; after :data:`WRITE_ATTEMPTS` conflicts the event goes
    back to kopf as a :class:`kopf.TemporaryError`. Returns the status now stored, or ``None`` when
    the SessionProcessor is gone.
    """
    path = sessionprocessor_path(namespace, name)
    for _attempt in range(WRITE_ATTEMPTS):
        body = state.client.get(path)
        if body is None:
            return None
        current: dict[str, Any] = strip_nulls(body.get("status") or {})
        new: dict[str, Any] = strip_nulls(change(body, copy.deepcopy(current)))
        if new == current:
            return current
        body["status"] = new
        try:
            state.client.replace(sessionprocessor_path(namespace, name, subresource="status"), body)
            return new
        except ApiError as error:
            if error.not_found:
                return None
            if not error.conflict:
                raise
    raise kopf.TemporaryError(f"the status of {namespace}/{name} kept changing; trying again", delay=1)


def strip_nulls(value: Any) -> Any:
    """Drop ``None`` values: the API server prunes them, so comparing with them would never settle."""
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(item) for item in value]
    return value
