"""Job outcomes: a finished Job of a SessionProcessor becomes a run in its status, once.

The runner's summary comes from the termination message of the Job's pod; the Job's own conditions
and the pod's state fill in what a runner that died without a summary could not say. The status is
folded by :func:`status.apply_job_event`, which ignores a Job already recorded, so a watch replaying
events never counts a run twice; the run's Event and metrics follow the first recording only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from sessionpipe_contract import (
    COUNTER_LLM_COST_MICROUSD,
    LABEL_INSTANCE,
    LABEL_PROCESSOR,
    OUTCOME_LEASE_NOT_ACQUIRED,
)
from sessionpipe_operator import events, metrics
from sessionpipe_operator import status as status_rules
from sessionpipe_operator.jobs import JOB_NAME_LABEL, job_outcome, job_succeeded, termination_message
from sessionpipe_operator.k8s import pod_path
from sessionpipe_operator.objects import ObjectMeta, SessionProcessor
from sessionpipe_operator.run_summary import parse_run_summary
from sessionpipe_operator.state import OperatorState
from sessionpipe_operator.status_writer import update_status

_MESSAGE_COUNTS = ("scanned", "processed", "skipped", "errors", "quarantined", "items")


def needs_recording(job: Mapping[str, Any], known: Mapping[str, Any] | None) -> bool:
    """Whether ``job`` finished and is not recorded in ``known`` (the index's copy of its processor).

    No processor in the index: not ours to record. Already recorded: e.g. the listing after a restart.
    """
    if job_outcome(job) is None or known is None:
        return False
    return not run_recorded(known.get("status") or {}, ObjectMeta.of(job).name)


def record_finished_job(state: OperatorState, namespace: str, job: dict[str, Any], logger: kopf.Logger) -> None:
    """Fold one finished Job into its processor's status; post the run's Event and count it the first time only."""
    meta = ObjectMeta.of(job)
    instance = meta.labels[LABEL_INSTANCE]
    pods = list_job_pods(state, namespace, meta.name)
    summary = parse_run_summary(termination_message(pods))
    first_time = False
    recorded_on: SessionProcessor | None = None

    def fold(cr: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        nonlocal first_time, recorded_on
        recorded_on = processor = SessionProcessor.parse(cr)
        first_time = not run_recorded(status, meta.name)
        now = datetime.now(UTC)
        folded = status_rules.apply_job_event(status, job, summary, now, pods)
        invalid = status_rules.current_invalid(status)
        return status_rules.with_conditions(folded, processor.created, processor.spec, now, invalid)

    written = update_status(state, namespace, instance, fold)
    if written is None or not first_time or recorded_on is None:
        return
    record = status_rules.run_record(job, summary, pods)
    outcome = str(record.get("outcome") or job_outcome(job) or "unknown")
    processor_label = meta.labels.get(LABEL_PROCESSOR, "")
    labels = {"namespace": namespace, "sessionprocessor": instance, "processor": processor_label}
    metrics.RUNS.labels(**labels, outcome=outcome).inc()
    for counter, value in ((summary or {}).get("counters") or {}).items():
        metrics.RUN_COUNTERS.labels(**labels, counter=counter).inc(value)
        if counter == COUNTER_LLM_COST_MICROUSD:
            metrics.LLM_COST.labels(**labels).inc(value / 1e6)
    message = run_message(meta.name, outcome, record)
    if outcome == OUTCOME_LEASE_NOT_ACQUIRED:
        events.post_info(recorded_on.body, reason="RunSkipped", message=message)
    elif job_succeeded(job):
        metrics.LAST_SUCCESS.labels(**labels).set(datetime.now(UTC).timestamp())
        events.post_info(recorded_on.body, reason="RunSucceeded", message=message)
    else:
        events.post_warn(recorded_on.body, reason="RunFailed", message=message)
    logger.info(f"recorded {message}")


def list_job_pods(state: OperatorState, namespace: str, job_name: str) -> list[dict[str, Any]]:
    """The Job's pods: their containers' termination messages and states say how the run ended."""
    return state.client.list(pod_path(namespace), label_selector=f"{JOB_NAME_LABEL}={job_name}")


def run_recorded(status: Mapping[str, Any], job_name: str) -> bool:
    runs: Iterable[Mapping[str, Any]] = [status.get("lastRun") or {}, *(status.get("recentRuns") or [])]
    return any(run.get("job") == job_name for run in runs)


def run_message(job_name: str, outcome: str, record: Mapping[str, Any]) -> str:
    """The run's Event text: the Job, its outcome, the counts it reported, why it did not succeed."""
    counts = ", ".join(f"{name} {record[name]}" for name in _MESSAGE_COUNTS if record.get(name) is not None)
    reason = f": {record['message']}" if record.get("message") else ""
    return f"Job {job_name}: {outcome}" + (f" ({counts})" if counts else "") + reason
