"""Status rules: what a finished Job means for a SessionProcessor, and which conditions follow.

Every function here is pure: it takes the current status (a plain dict, as stored), a Job as the API
server returned it, the runner's summary and the time, and returns new values without touching its
inputs. Recording the same finished Job twice changes nothing, so a watch that replays events (a
restarted operator lists every Job again) never double-counts a run.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sessionpipe_contract import (
    EXIT_LEASE_NOT_ACQUIRED,
    OUTCOME_FAILED,
    OUTCOME_LEASE_NOT_ACQUIRED,
    OUTCOME_SUCCEEDED,
    SUMMARY_KEYS,
)
from sessionpipe_operator.models import MAX_RUN_MESSAGE, RECENT_RUNS_LIMIT, SessionProcessorSpec

CONDITION_READY = "Ready"
CONDITION_STALE = "Stale"
CONDITION_DEGRADED = "Degraded"
CONDITION_INVALID_SPEC = "InvalidSpec"
#: The Job ran out of ``activeDeadlineSeconds`` (``run.timeoutSeconds``).
OUTCOME_DEADLINE_EXCEEDED = "deadline_exceeded"
#: Stale once the last success is older than this many schedule periods.
STALE_PERIODS = 2

_COUNT_KEYS = ("scanned", "unchanged", "hashed", "processed", "skipped", "errors", "quarantined", "items", "exit_code")
_TEXT_KEYS = ("processor", "processor_version", "run_id", "outcome", "started", "finished", "message")
_RECORD_COUNTS = ("scanned", "processed", "skipped", "errors", "quarantined", "items")
_MAX_TEXT = 1024
_COUNTER_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_MAX_COUNTERS = 32  # each name is a metric label value: a processor must not flood the registry
_MAX_DETAIL = 400  # of one container's message: a runtime error, a log line


# --- the runner's summary ---------------------------------------------------------------------------
def parse_run_summary(message: str | None) -> dict[str, Any] | None:
    """The runner's run summary from a pod's termination message, or ``None`` if there is none.

    The message is normally the JSON object the runner wrote (keys: ``SUMMARY_KEYS``). With
    ``FallbackToLogsOnError`` it may instead be the tail of the log, which may still end with the
    summary line; anything else (truncated JSON, a stack trace, binary noise) yields ``None``.
    Values of the wrong type are dropped one by one, so one odd field never loses the others.
    """
    if not message or not message.strip():
        return None
    candidates = [message.strip(), *reversed([line.strip() for line in message.splitlines() if line.strip()])]
    for candidate in candidates:
        if not candidate.startswith("{"):
            continue
        try:
            parsed = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            summary = _clean_summary(parsed)
            if summary:
                return summary
    return None


def _clean_summary(raw: Mapping[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        value = raw.get(key)
        if key in _COUNT_KEYS:
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                summary[key] = value
        elif key == "duration_seconds":
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
                summary[key] = float(value)
        elif key in _TEXT_KEYS:
            if isinstance(value, str) and value:
                summary[key] = value[:_MAX_TEXT]
        elif key == "issues" and isinstance(value, dict):
            summary[key] = value
        elif key == "counters" and isinstance(value, dict):
            summary[key] = run_counters(value)
    return summary


def run_counters(raw: Mapping[str, Any]) -> dict[str, int]:
    """A summary's counters fit to become metric labels: snake_case names, counts, a bounded number."""
    counters = {
        name: value
        for name, value in raw.items()
        if isinstance(name, str)
        and _COUNTER_NAME.fullmatch(name)
        and isinstance(value, int)
        and not isinstance(value, bool)
        and value >= 0
    }
    return dict(sorted(counters.items())[:_MAX_COUNTERS])


def cronjob_mirror(cronjob: Mapping[str, Any]) -> dict[str, Any]:
    """The status fields copied from the CronJob: its running Jobs (names and count), its last tick."""
    cron_status = cronjob.get("status") or {}
    names = sorted(ref.get("name", "") for ref in cron_status.get("active") or [])
    return {"active": names or None, "activeCount": len(names), "lastScheduleTime": cron_status.get("lastScheduleTime")}


# --- pods of a Job -----------------------------------------------------------------------------------
def _newest_first(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(pods, key=lambda pod: str((pod.get("metadata") or {}).get("creationTimestamp") or ""), reverse=True)


def termination_message(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The runner's summary as the kubelet reported it: the message of the most recently finished container."""
    finished: list[tuple[str, str]] = []
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if terminated:
                finished.append((str(terminated.get("finishedAt") or ""), str(terminated.get("message") or "")))
    if not finished:
        return None
    return max(finished)[1] or None


def failure_reason(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> str | None:
    """Why a Job did not succeed, from Kubernetes alone; ``None`` for a running or succeeded Job.

    The Job's ``Failed`` condition (``BackoffLimitExceeded``, ``DeadlineExceeded``,
    ``PodFailurePolicy``…) comes first, then what its newest pod says: a terminated container's reason
    and exit code with the runtime's message (a start error such as "argument list too long", the last
    line of a log tail), a waiting container's reason (``ImagePullBackOff``…), or the pod's own reason
    (``Evicted``). A runner's summary is not repeated here: it is the run's record, not its cause.
    """
    failed = _true_conditions(job).get("Failed")
    if failed is None:
        return None
    parts = [_reason_text(failed.get("reason"), failed.get("message")) or "Failed"]
    newest = _newest_first(pods)
    if newest:
        parts.append(_pod_reason(newest[0]) or "")
    return "; ".join(part for part in parts if part)[:MAX_RUN_MESSAGE]


def _pod_reason(pod: Mapping[str, Any]) -> str | None:
    pod_status = pod.get("status") or {}
    details = []
    for container in pod_status.get("containerStatuses") or []:
        name = container.get("name") or "?"
        state = container.get("state") or {}
        if terminated := state.get("terminated"):
            exit_code = terminated.get("exitCode")
            text = f"container {name}: {terminated.get('reason') or 'Terminated'} (exit code {exit_code})"
            detail = _detail(terminated.get("message"))
            details.append(f"{text}: {detail}" if detail else text)
        elif waiting := state.get("waiting"):
            details.append(f"container {name} waiting: {_reason_text(waiting.get('reason'), waiting.get('message'))}")
    if not details and (pod_status.get("reason") or pod_status.get("message")):
        details.append(f"pod {_reason_text(pod_status.get('reason'), pod_status.get('message'))}")
    return "; ".join(details) or None


def _detail(message: Any) -> str:
    """A container message worth quoting: not a JSON summary; of a log tail, its last line."""
    lines = [line.strip() for line in str(message or "").splitlines() if line.strip()]
    if not lines or lines[-1].startswith("{"):
        return ""
    return lines[-1][-_MAX_DETAIL:]


def _reason_text(reason: Any, message: Any) -> str:
    return ": ".join(str(part) for part in (reason, message) if part)


# --- Jobs -------------------------------------------------------------------------------------------
def _true_conditions(job: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    conditions = (job.get("status") or {}).get("conditions") or []
    return {c.get("type", ""): c for c in conditions if isinstance(c, Mapping) and c.get("status") == "True"}


def job_is_active(job: Mapping[str, Any]) -> bool:
    """Whether the Job has not finished: neither ``Complete`` nor ``Failed`` yet.

    A Job marked ``FailureTarget``/``SuccessCriteriaMet`` may still have a pod terminating, so it
    counts as active until its final condition: no second run may start beside it.
    """
    finished = _true_conditions(job)
    return "Complete" not in finished and "Failed" not in finished


def job_outcome(job: Mapping[str, Any]) -> str | None:
    """How the Job ended as Kubernetes saw it; ``None`` while it runs.

    ``succeeded``, ``deadline_exceeded`` (``run.timeoutSeconds`` ran out), ``lease_not_acquired``
    (the pod failure policy matched the runner's exit code for it), or ``failed``.
    """
    finished = _true_conditions(job)
    if "Complete" in finished:
        return OUTCOME_SUCCEEDED
    failed = finished.get("Failed")
    if failed is None:
        return None
    reason = str(failed.get("reason") or "")
    if reason == "DeadlineExceeded":
        return OUTCOME_DEADLINE_EXCEEDED
    if reason == "PodFailurePolicy" and f"exit code {EXIT_LEASE_NOT_ACQUIRED}" in str(failed.get("message") or ""):
        return OUTCOME_LEASE_NOT_ACQUIRED
    return OUTCOME_FAILED


def run_record(
    job: Mapping[str, Any], summary: Mapping[str, Any] | None, pods: Iterable[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """The ``lastRun`` / ``recentRuns[]`` entry for a finished Job, its runner's summary and its pods.

    The runner's own outcome and counts win; the Job fills in what a runner that died without a
    summary could not say. A Job stopped by its deadline reads ``deadline_exceeded`` even though its
    runner, stopped by SIGTERM, reports ``terminated``: the deadline is the cause a person can fix.
    A run that did not succeed always has a ``message``: the runner's own, else
    :func:`failure_reason` (always for a deadline).
    """
    summary = summary or {}
    job_status = job.get("status") or {}
    finished = _true_conditions(job)
    final = finished.get("Complete") or finished.get("Failed") or {}
    start = _time(summary.get("started")) or _time(job_status.get("startTime"))
    end = (
        _time(summary.get("finished"))
        or _time(job_status.get("completionTime"))
        or _time(final.get("lastTransitionTime"))
    )
    kube_outcome = job_outcome(job)
    outcome = summary.get("outcome") or kube_outcome
    if kube_outcome == OUTCOME_DEADLINE_EXCEEDED:
        outcome = kube_outcome
    record: dict[str, Any] = {"job": job["metadata"]["name"], "start": _format(start), "end": _format(end)}
    record["outcome"] = outcome
    for key in _RECORD_COUNTS:
        record[key] = summary.get(key)
    duration = summary.get("duration_seconds")
    if duration is None and start is not None and end is not None and end >= start:
        duration = (end - start).total_seconds()
    record["duration"] = None if duration is None else round(float(duration), 3)
    if outcome != OUTCOME_SUCCEEDED:
        own = None if kube_outcome == OUTCOME_DEADLINE_EXCEEDED else summary.get("message")
        record["message"] = (own or failure_reason(job, pods) or "")[:MAX_RUN_MESSAGE] or None
    return {key: value for key, value in record.items() if value is not None}


def _succeeded(job: Mapping[str, Any]) -> bool:
    return "Complete" in _true_conditions(job)


def apply_job_event(
    status: Mapping[str, Any],
    job: Mapping[str, Any],
    summary: Mapping[str, Any] | None,
    now: datetime,
    pods: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The status after recording the finished Job ``job`` (unchanged while it runs or once recorded).

    ``pods`` are the Job's pods, read for the cause of a failure (:func:`run_record`).

    - ``lastRun`` is the newest finished run; ``recentRuns`` the newest ``RECENT_RUNS_LIMIT``, newest
      first, one entry per Job.
    - A Job that completed is a success: ``lastSuccessfulTime`` advances and ``consecutiveFailures``
      resets. A failed Job sets ``lastFailureTime`` and counts one more consecutive failure.
    - A run skipped because another writer held the database (``lease_not_acquired``) is neither: it
      never ran the processor. If such skips go on, the Stale rule says so.
    - Events arriving out of order (an older Job recorded after a newer one) never move times
      backwards, and an old failure does not count against a newer success.
    """
    new = copy.deepcopy(dict(status))
    if job_outcome(job) is None:
        return new
    name = job["metadata"]["name"]
    previous_runs = [run for run in [new.get("lastRun"), *(new.get("recentRuns") or [])] if isinstance(run, dict)]
    if any(run.get("job") == name for run in previous_runs):
        return new
    record = run_record(job, summary, pods)
    if "end" not in record:
        record["end"] = _format(now)
    runs = _dedupe([record, *previous_runs])
    runs.sort(key=lambda run: _time(run.get("end")) or datetime.min.replace(tzinfo=UTC), reverse=True)
    runs = runs[:RECENT_RUNS_LIMIT]
    new["lastRun"] = runs[0]
    new["recentRuns"] = runs
    end = _time(record["end"]) or now
    last_success = _time(new.get("lastSuccessfulTime"))
    last_failure = _time(new.get("lastFailureTime"))
    failures = new.get("consecutiveFailures") or 0
    if _succeeded(job):
        new["lastSuccessfulTime"] = _format(max(filter(None, (last_success, end))))
        if last_failure is None or end >= last_failure:
            failures = 0
    elif record.get("outcome") != OUTCOME_LEASE_NOT_ACQUIRED:
        new["lastFailureTime"] = _format(max(filter(None, (last_failure, end))))
        if last_success is None or end > last_success:
            failures += 1
    new["consecutiveFailures"] = failures
    return new


def _dedupe(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    unique = []
    for run in runs:
        if run.get("job") not in seen:
            seen.add(str(run.get("job")))
            unique.append(run)
    return unique


# --- conditions -------------------------------------------------------------------------------------
def conditions(
    status: Mapping[str, Any],
    spec: SessionProcessorSpec | None,
    now: datetime,
    period: timedelta | None,
    invalid: str | None,
    *,
    created: datetime | None = None,
) -> list[dict[str, Any]]:
    """Ready, Stale, Degraded and InvalidSpec for ``status``, keeping transition times that did not change.

    - ``InvalidSpec`` is true with ``invalid`` as its message when the spec cannot work.
    - ``Stale`` is true when the last success (or, with none, ``created`` or the first recorded run)
      is older than twice the schedule's ``period``; a suspended processor is never stale.
    - ``Degraded`` is true while ``consecutiveFailures`` > 0.
    - ``Ready`` is true when the CronJob is in place and none of the above is true.
    """
    generation = status.get("observedGeneration")
    current: list[dict[str, Any]] = [dict(c) for c in status.get("conditions") or [] if isinstance(c, Mapping)]

    if invalid:
        current = set_condition(current, CONDITION_INVALID_SPEC, "True", "InvalidSpec", invalid, now, generation)
    else:
        current = set_condition(current, CONDITION_INVALID_SPEC, "False", "Valid", "the spec is valid", now, generation)

    stale_status, stale_reason, stale_message = _staleness(status, spec, now, period, invalid, created)
    current = set_condition(current, CONDITION_STALE, stale_status, stale_reason, stale_message, now, generation)

    failures = int(status.get("consecutiveFailures") or 0)
    if failures > 0:
        last = status.get("lastRun") or {}
        message = f"{failures} consecutive failed run(s); the last, Job {last.get('job')}, ended {last.get('outcome')}"
        current = set_condition(current, CONDITION_DEGRADED, "True", "RunsFailing", message, now, generation)
    else:
        current = set_condition(
            current, CONDITION_DEGRADED, "False", "NoFailures", "no failed run since the last success", now, generation
        )

    if invalid:
        ready = ("False", "InvalidSpec", invalid)
    elif not status.get("cronJobName"):
        ready = ("False", "Reconciling", "the CronJob is not in place yet")
    elif stale_status == "True":
        ready = ("False", "Stale", stale_message)
    elif failures > 0:
        ready = ("False", "Degraded", f"{failures} consecutive failed run(s)")
    elif spec is not None and spec.suspend:
        ready = ("True", "Suspended", f"CronJob {status.get('cronJobName')} is in place and suspended")
    else:
        ready = ("True", "Scheduled", f"CronJob {status.get('cronJobName')} is in place")
    current = set_condition(current, CONDITION_READY, *ready, now, generation)

    order = {CONDITION_READY: 0, CONDITION_STALE: 1, CONDITION_DEGRADED: 2, CONDITION_INVALID_SPEC: 3}
    return sorted(current, key=lambda c: (order.get(str(c.get("type")), len(order)), str(c.get("type"))))


def _staleness(
    status: Mapping[str, Any],
    spec: SessionProcessorSpec | None,
    now: datetime,
    period: timedelta | None,
    invalid: str | None,
    created: datetime | None,
) -> tuple[str, str, str]:
    if invalid or spec is None or period is None:
        return "Unknown", "NoSchedule", "no valid schedule to measure against"
    if spec.suspend:
        return "False", "Suspended", "a suspended processor is not expected to run"
    limit = period * STALE_PERIODS
    last_success = _time(status.get("lastSuccessfulTime"))
    if last_success is not None:
        if now - last_success > limit:
            return (
                "True",
                "NoRecentSuccess",
                f"the last success, at {_format(last_success)}, is older than {STALE_PERIODS} schedule periods "
                f"({_duration(limit)})",
            )
        return "False", "RecentSuccess", f"succeeded at {_format(last_success)}, within {_duration(limit)}"
    runs = [run for run in [status.get("lastRun"), *(status.get("recentRuns") or [])] if isinstance(run, Mapping)]
    starts = [t for t in (_time(run.get("start")) or _time(run.get("end")) for run in runs) if t is not None]
    since = created or (min(starts) if starts else None)
    if since is None:
        return "False", "NoRunsYet", "no run has finished yet"
    if now - since > limit:
        return (
            "True",
            "NeverSucceeded",
            f"no successful run since {_format(since)}, "
            f"more than {STALE_PERIODS} schedule periods ({_duration(limit)}) ago",
        )
    return "False", "WithinFirstPeriods", f"no success yet, but {_format(since)} is within {_duration(limit)}"


def set_condition(
    current: Iterable[Mapping[str, Any]],
    type: str,
    status: str,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """``current`` with the condition ``type`` set; its ``lastTransitionTime`` moves only if ``status`` changed."""
    result: list[dict[str, Any]] = []
    previous: Mapping[str, Any] | None = None
    for existing in current:
        if existing.get("type") == type and previous is None:
            previous = existing
        elif existing.get("type") != type:
            result.append(dict(existing))
    transition = _format(now)
    if previous is not None and previous.get("status") == status and previous.get("lastTransitionTime"):
        transition = str(previous["lastTransitionTime"])
    condition: dict[str, Any] = {
        "type": type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if observed_generation is not None:
        condition["observedGeneration"] = observed_generation
    result.append(condition)
    return result


# --- time -------------------------------------------------------------------------------------------
def _time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime; ``None`` for anything else."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _format(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    return "".join(parts) or "0m"
