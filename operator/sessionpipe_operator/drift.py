"""The CronJob as rendered stays so: put back one someone deleted or edited; mirror its status.

What was last rendered per processor is in ``OperatorState.desired``; a CronJob event that differs
from it in a rendered field is drift, unless it is the echo of our own apply or an event older than
it. A CronJob deleted while its SessionProcessor still lives is created again; one deleted with its
owner (garbage collection) or its namespace is let go.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from sessionpipe_operator import events, metrics, render
from sessionpipe_operator import status as status_rules
from sessionpipe_operator.k8s import ApiError, cronjob_path, sessionprocessor_path
from sessionpipe_operator.objects import ObjectMeta, SessionProcessor
from sessionpipe_operator.reconcile import ensure_cronjob
from sessionpipe_operator.state import Key, OperatorState
from sessionpipe_operator.status_writer import update_status


def restore_deleted_cronjob(state: OperatorState, key: Key, logger: kopf.Logger) -> None:
    """Create the CronJob of ``key`` again, if its SessionProcessor is still there to own it."""
    desired = state.desired.get(key)
    if desired is None:
        return
    cr = state.client.get(sessionprocessor_path(*key))
    if cr is None or not _still_owns(ObjectMeta.of(cr), desired):
        # The owner is going away: garbage collection deleted the CronJob, as it should.
        state.desired.pop(key, None)
        return
    with state.lock(key):
        desired = state.desired.get(key)  # a reconcile may have replaced it meanwhile
        if desired is None:
            return
        try:
            if ensure_cronjob(state, key, desired) == "unchanged":
                return
        except ApiError as error:
            if error.status == 403 and "being terminated" in error.message:
                state.desired.pop(key, None)  # the namespace is going away with everything in it
                return
            raise
    metrics.DRIFT_REPAIRS.labels(namespace=key[0], sessionprocessor=key[1], kind="deleted").inc()
    logger.info(f"CronJob {key[0]}/{key[1]} was deleted; put it back")
    events.post_info(cr, reason="CronJobRestored", message="the CronJob was deleted by someone else; recreated it")


def _still_owns(owner: ObjectMeta, desired: dict[str, Any]) -> bool:
    return not owner.deletion_timestamp and owner.uid == ObjectMeta.of(desired).controller_uid


def repair_drift(state: OperatorState, key: Key, cronjob: dict[str, Any], logger: kopf.Logger) -> None:
    """Apply the rendered CronJob again if ``cronjob`` (an event's copy) lost a rendered field."""
    # Under the key's lock: a reconcile of a changed spec holds it while it applies the new CronJob
    # and records it, so the event of that apply is never judged against the spec before it.
    with state.lock(key):
        desired = state.desired.get(key)
        if desired is None:
            return
        meta = ObjectMeta.of(cronjob)
        if meta.resource_version == state.applied_versions.get(key):
            return  # the echo of our own apply
        if meta.uid and not meta.owned_by(ObjectMeta.of(desired).controller_uid):
            return
        if not render.cronjob_drifted(desired, cronjob):
            return
        current = state.client.get(cronjob_path(*key))  # the event may be older than our last apply
        if current is None or not render.cronjob_drifted(desired, current):
            return
        applied = state.client.apply(cronjob_path(*key), desired)
        state.applied_versions[key] = ObjectMeta.of(applied).resource_version
    metrics.DRIFT_REPAIRS.labels(namespace=key[0], sessionprocessor=key[1], kind="edited").inc()
    logger.info(f"CronJob {key[0]}/{key[1]} was edited; put the rendered fields back")
    cr = state.client.get(sessionprocessor_path(*key))
    if cr is not None:
        events.post_info(cr, reason="CronJobRepaired", message="the CronJob was edited by someone else; restored it")


def mirror_cronjob_status(
    state: OperatorState, key: Key, cronjob: dict[str, Any], known: dict[str, Any] | None
) -> None:
    """Copy the running Jobs (``active``, ``activeCount``) and ``lastScheduleTime`` from the CronJob.

    Writes only when they changed from ``known`` (the index's copy of the processor).
    """
    if key not in state.desired or known is None:
        return
    mirrored = status_rules.cronjob_mirror(cronjob)
    current = known.get("status") or {}
    if all(current.get(field_name) == value for field_name, value in mirrored.items()):
        return

    def mirror(cr: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        status.update(mirrored)
        status["nextScheduleTime"] = status_rules.next_schedule_time(SessionProcessor.parse(cr).spec, datetime.now(UTC))
        return status

    update_status(state, key[0], key[1], mirror)
