"""Run-now: a new ``sessionpipe.io/run-now`` token starts one Job now, unless one is already running.

The Job is made from the CronJob's template, owned by the CronJob, and registered in the CronJob's
``status.active``: the CronJob controller's ``Forbid`` policy only counts the Jobs in that list, so
this is what stops a scheduled tick from starting a second Job beside it. A tick may still start one
between our check and the registration; then the run-now Job is deleted again, so one Job runs.
Kopf remembers the last handled annotations, so a token is served once even across restarts; the
Job also carries the token, which covers a crash between creating it and kopf's bookkeeping.
"""

from __future__ import annotations

from typing import Any

import kopf

from sessionpipe_contract import ANNOTATION_RUN_NOW_TOKEN, LABEL_INSTANCE
from sessionpipe_operator import events, render
from sessionpipe_operator.jobs import job_is_active
from sessionpipe_operator.k8s import ApiError, cronjob_path, job_path
from sessionpipe_operator.objects import ObjectMeta, SessionProcessor
from sessionpipe_operator.state import OperatorState
from sessionpipe_operator.status_writer import WRITE_ATTEMPTS


def serve_run_now(state: OperatorState, processor: SessionProcessor, token: str, logger: kopf.Logger) -> None:
    """Serve one run-now token under the processor's lock; a skipped run gets a ``RunSkipped`` Event."""
    with state.lock((processor.meta.namespace, processor.meta.name)):
        skipped = start_run_now(state, processor, token, logger)
    if skipped is not None:
        events.post_info(processor.body, reason="RunSkipped", message=skipped)


def start_run_now(state: OperatorState, processor: SessionProcessor, token: str, logger: kopf.Logger) -> str | None:
    """Create the run-now Job; return why not instead when it must be skipped."""
    namespace, name = processor.meta.namespace, processor.meta.name
    jobs = _jobs_of(state, namespace, name)
    if any(ObjectMeta.of(job).annotations.get(ANNOTATION_RUN_NOW_TOKEN) == token for job in jobs):
        logger.info(f"run-now {token!r} was already served")
        return None
    if processor.invalid is not None:
        return f"run-now {token!r} skipped: the spec is invalid ({processor.invalid})"
    cronjob = state.client.get(cronjob_path(namespace, name))
    if cronjob is None or not ObjectMeta.of(cronjob).owned_by(processor.meta.uid):
        raise kopf.TemporaryError("the CronJob does not exist yet", delay=2)
    running = sorted(
        {ObjectMeta.of(job).name for job in jobs if job_is_active(job)}
        | {ref.get("name", "") for ref in cronjob.get("status", {}).get("active") or []}
    )
    if running:
        return f"run-now {token!r} skipped: Job {', '.join(running)} of this processor is still running"
    created = ObjectMeta.of(state.client.create(job_path(namespace), render.build_run_now_job(cronjob, token)))
    register_active_job(state, cronjob, created)
    # A scheduled tick may have started a Job between our check and the registration: keep one.
    others = [ObjectMeta.of(job) for job in _jobs_of(state, namespace, name) if job_is_active(job)]
    clash = [other.name for other in others if other.uid != created.uid]
    if clash:
        state.client.delete(job_path(namespace, created.name))
        return f"run-now {token!r} skipped: scheduled Job {', '.join(clash)} started at the same moment"
    logger.info(f"run-now {token!r}: started Job {created.name}")
    events.post_info(processor.body, reason="RunStarted", message=f"run-now {token!r}: started Job {created.name}")
    return None


def _jobs_of(state: OperatorState, namespace: str, name: str) -> list[dict[str, Any]]:
    return state.client.list(job_path(namespace), label_selector=f"{LABEL_INSTANCE}={name}")


def register_active_job(state: OperatorState, cronjob: dict[str, Any], job: ObjectMeta) -> None:
    """Add ``job`` to the CronJob's ``status.active`` so that ``concurrencyPolicy: Forbid`` counts it.

    The CronJob controller treats a Job it did not create as "unexpected" and leaves it out of its
    active list; once listed, it keeps the entry until the Job finishes and removes it itself.
    """
    cron_meta = ObjectMeta.of(cronjob)
    namespace, name = cron_meta.namespace, cron_meta.name
    reference = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "namespace": namespace,
        "name": job.name,
        "uid": job.uid,
        "resourceVersion": job.resource_version,
    }
    current: dict[str, Any] | None = cronjob
    for _attempt in range(WRITE_ATTEMPTS):
        if current is None:
            return
        active = list(current.get("status", {}).get("active") or [])
        if any(ref.get("uid") == reference["uid"] for ref in active):
            return
        patch = {
            "metadata": {"resourceVersion": ObjectMeta.of(current).resource_version},
            "status": {"active": [*active, reference]},
        }
        try:
            state.client.merge_patch(cronjob_path(namespace, name, subresource="status"), patch)
            return
        except ApiError as error:
            if not error.conflict:
                raise
        current = state.client.get(cronjob_path(namespace, name))
    raise kopf.TemporaryError("the CronJob kept changing while registering the run-now Job", delay=1)
