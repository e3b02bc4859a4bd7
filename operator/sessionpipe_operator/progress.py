"""The PROGRESS column: how far a running Job got, read from the database Lease its runner renews.

The runner puts its progress on the Lease it holds (:data:`ANNOTATION_PROGRESS`, on each renewal,
dropped when it releases). One operator-wide loop, like the stale check, reads the Lease of each
processor that has a running Job, every few seconds, and writes ``status.progress`` when the text
changed. Reading a few Leases by name needs only ``get`` on leases; watching Leases would stream
every Lease of the watched namespaces (node heartbeats, leader elections) to the operator.

The progress shown is only ever that of one of the processor's own running Jobs: the Lease's
holder is a pod of a Job in ``status.active`` and the annotation names the processor. (Processors
of different kinds may share a database, hence a Lease.) When no Job runs, the text is cleared;
the CronJob mirror clears it too, at once, when the last Job ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sessionpipe_contract import ANNOTATION_PROGRESS
from sessionpipe_operator import render
from sessionpipe_operator.k8s import ApiError
from sessionpipe_operator.leader import lease_path
from sessionpipe_operator.objects import SessionProcessor
from sessionpipe_operator.state import OperatorState, index_value
from sessionpipe_operator.status_writer import StatusChange, update_status

log = logging.getLogger(__name__)

#: How often running Jobs' progress is read. The runner renews (and so republishes) every third
#: of its lease duration, 10 s by default; reading twice as often shows each change soon.
PROGRESS_CHECK_SECONDS = 5.0


def progress_text(lease: Mapping[str, Any] | None, processor: str, active: Sequence[str]) -> str | None:
    """``1,234/5,000`` (files done/total) when ``lease`` carries the progress of one of ``active``'s Jobs.

    ``None`` when no Job runs, the Lease is held by someone else (a pod of another Job, or nobody)
    or carries no readable progress of ``processor``.
    """
    if not active or not lease:
        return None
    holder = (lease.get("spec") or {}).get("holderIdentity") or ""
    if not any(holder.startswith(f"{job}-") for job in active):  # a Job's pods are named <job>-<suffix>
        return None
    raw = ((lease.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_PROGRESS)
    try:
        published = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    if not isinstance(published, dict) or published.get("processor") != processor:
        return None
    done, total = published.get("filesDone"), published.get("filesTotal")
    if not (isinstance(done, int) and isinstance(total, int) and 0 <= done <= total):
        return None
    return f"{done:,}/{total:,}"


def refresh_progress(state: OperatorState) -> None:
    """One pass: for each processor with a running Job (or a progress left to clear), read its Lease."""
    if state.bodies is None:
        return
    for key in list(state.bodies):
        known = index_value(state.bodies, key)
        if known is None:
            continue
        processor = SessionProcessor.parse(known)
        active = list(processor.status.get("active") or [])
        shown = processor.status.get("progress")
        if not active and not shown:
            continue
        text = None
        if active and processor.spec is not None:
            try:
                lease = state.client.get(lease_path(key[0], render.lease_name_for(processor.spec)))
            except ApiError as error:
                log.warning("cannot read the Lease of %s/%s for its progress: %s", key[0], key[1], error)
                continue
            text = progress_text(lease, processor.spec.processor, active)
        if text == shown:
            continue
        update_status(state, key[0], key[1], _with_progress(text))


def _with_progress(text: str | None) -> StatusChange:
    def change(_cr: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        # Decided on the status as read afresh: a Job that ended meanwhile gets no progress back.
        status["progress"] = text if status.get("active") else None
        return status

    return change
