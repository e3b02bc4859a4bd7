"""SessionProcessor -> CronJob: render the one CronJob of a valid spec, or mark the spec invalid.

A spec is reconciled on create, resume and spec update. What the schema cannot check is checked
here, in this order: the whole spec validates, the schedule has an exact cron form, the policy
allows its image and service account, and no older processor writes the same database
(:mod:`sessionpipe_operator.writers`). A spec that passes gets its CronJob, written with server-side
apply only when missing or drifted; one that fails gets ``InvalidSpec`` and one Event, and the
handler returns normally: retrying cannot fix a spec, and a changed spec is reconciled afresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from sessionpipe_operator import events, metrics, policy, render, schedule
from sessionpipe_operator import status as status_rules
from sessionpipe_operator.k8s import ApiError, cronjob_path
from sessionpipe_operator.models import SessionProcessorSpec
from sessionpipe_operator.objects import ObjectMeta, SessionProcessor, valid_spec
from sessionpipe_operator.state import Key, OperatorState
from sessionpipe_operator.status_writer import update_status
from sessionpipe_operator.writers import WriterKey, older_rival, rival_message, rivals_to_revisit, writer_key


def reconcile_processor(
    state: OperatorState, processor: SessionProcessor, by_database: Any, logger: kopf.Logger
) -> None:
    """Validate what the schema cannot, then create or repair the CronJob and refresh the status."""
    namespace, name = processor.meta.namespace, processor.meta.name
    spec = processor.spec
    if spec is None:
        mark_invalid(state, processor, processor.spec_error or "invalid spec", logger)
        return
    refused = _unworkable(spec, state)
    if refused is None:
        rival = older_rival(by_database, writer_key(namespace, spec), name, processor.meta.creation_timestamp)
        refused = None if rival is None else rival_message(rival, spec)
    if refused is not None:
        mark_invalid(state, processor, refused, logger)
        return
    key = (namespace, name)
    desired = render.build_cronjob(name, namespace, processor.owner_reference(), spec, state.settings)
    with state.lock(key):
        try:
            action = ensure_cronjob(state, key, desired)
        except ApiError as error:
            if error.invalid:
                mark_invalid(state, processor, f"the API server rejects the CronJob: {error.message}", logger)
                return
            raise
        state.desired[key] = desired
    if action != "unchanged":
        logger.info(f"CronJob {namespace}/{name} {action}")
    metrics.start_series(namespace, name, spec.processor, uses_llm=spec.llm is not None)
    update_status(state, namespace, name, lambda cr, status: _reconciled_status(cr, status, spec, desired))
    # Two processors created at the same moment may each have checked before the other was indexed.
    reconcile_rivals(state, writer_key(namespace, spec), name, by_database, logger, refused=False)


def _unworkable(spec: SessionProcessorSpec, state: OperatorState) -> str | None:
    """Why a spec that validates still cannot run: its schedule, or the policy (the chart's
    admission policy may be absent)."""
    try:
        schedule.normalize_schedule(spec.schedule)
    except schedule.InvalidSchedule as error:
        return f"spec.schedule: {error}"
    return policy.refusal(spec, state.settings)


def ensure_cronjob(state: OperatorState, key: Key, desired: dict[str, Any]) -> str:
    """Apply ``desired`` if the CronJob is missing or differs in a field we render; say what was done."""
    path = cronjob_path(*key)
    actual = state.client.get(path)
    if actual is not None and not render.cronjob_drifted(desired, actual):
        return "unchanged"
    applied = state.client.apply(path, desired)
    state.applied_versions[key] = ObjectMeta.of(applied).resource_version
    return "created" if actual is None else "updated"


def mark_invalid(state: OperatorState, processor: SessionProcessor, message: str, logger: kopf.Logger) -> None:
    """Record an unworkable spec once: condition, Event, metric; suspend a CronJob left from before.

    Returns normally on purpose: retrying cannot fix a spec, and a changed spec is a new update.
    """
    namespace, name = processor.meta.namespace, processor.meta.name
    state.desired.pop((namespace, name), None)
    update_status(state, namespace, name, lambda cr, status: _invalid_status(cr, status, message))
    if processor.invalid != message:
        logger.warning(f"invalid spec: {message}")
        events.post_warn(processor.body, reason=status_rules.CONDITION_INVALID_SPEC, message=message)
        metrics.INVALID_SPECS.labels(namespace=namespace, sessionprocessor=name).inc()
    # An older, valid spec's CronJob would keep running a configuration the user replaced.
    cronjob = state.client.get(cronjob_path(namespace, name))
    if (
        cronjob is not None
        and ObjectMeta.of(cronjob).owned_by(processor.meta.uid)
        and not cronjob.get("spec", {}).get("suspend")
    ):
        state.client.merge_patch(cronjob_path(namespace, name), {"spec": {"suspend": True}})


def reconcile_rivals(
    state: OperatorState, writer: WriterKey, name: str, by_database: Any, logger: kopf.Logger, *, refused: bool
) -> None:
    """Reconcile again the other processors on ``writer`` (see :func:`writers.rivals_to_revisit`)."""
    for rival in rivals_to_revisit(state, writer, name, by_database, refused=refused):
        reconcile_processor(state, rival, by_database, logger)


def release_database(
    state: OperatorState, namespace: str, name: str, spec: Mapping[str, Any], by_database: Any, logger: kopf.Logger
) -> None:
    """``name`` no longer writes the database of ``spec`` (deleted, or moved): a refused rival may run now."""
    parsed = valid_spec(spec)
    if parsed is not None:
        reconcile_rivals(state, writer_key(namespace, parsed), name, by_database, logger, refused=True)


def _reconciled_status(
    cr: dict[str, Any], status: dict[str, Any], spec: SessionProcessorSpec, cronjob: dict[str, Any]
) -> dict[str, Any]:
    now = datetime.now(UTC)
    processor = SessionProcessor.parse(cr)
    status["observedGeneration"] = processor.meta.generation
    status["cronJobName"] = cronjob["metadata"]["name"]
    status["schedule"] = schedule.effective_cron(spec.schedule)
    status["nextScheduleTime"] = status_rules.next_schedule_time(spec, now)
    return status_rules.with_conditions(status, processor.created, spec, now, None)


def _invalid_status(cr: dict[str, Any], status: dict[str, Any], message: str) -> dict[str, Any]:
    processor = SessionProcessor.parse(cr)
    status["observedGeneration"] = processor.meta.generation
    status["nextScheduleTime"] = None
    status["schedule"] = None
    return status_rules.with_conditions(status, processor.created, processor.spec, datetime.now(UTC), message)
