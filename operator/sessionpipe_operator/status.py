"""Status rules: what a finished Job means for a SessionProcessor, and which conditions follow.

Every function here is pure: it takes the current status (a plain dict, as stored), a Job as the API
server returned it, the runner's summary and the time, and returns new values without touching its
inputs. Recording the same finished Job twice changes nothing, so a watch that replays events (a
restarted operator lists every Job again) never double-counts a run. What a Job and its pods say
lives in :mod:`sessionpipe_operator.jobs`, the runner's summary in :mod:`sessionpipe_operator.run_summary`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sessionpipe_contract import OUTCOME_LEASE_NOT_ACQUIRED, OUTCOME_SUCCEEDED
from sessionpipe_operator import schedule
from sessionpipe_operator.jobs import (
    OUTCOME_DEADLINE_EXCEEDED,
    failure_reason,
    job_outcome,
    job_succeeded,
    true_conditions,
)
from sessionpipe_operator.models import MAX_RUN_MESSAGE, RECENT_RUNS_LIMIT, SessionProcessorSpec

CONDITION_READY = "Ready"
CONDITION_STALE = "Stale"
CONDITION_DEGRADED = "Degraded"
CONDITION_INVALID_SPEC = "InvalidSpec"
#: Stale once the last success is older than this many schedule periods.
STALE_PERIODS = 2

_RECORD_COUNTS = ("scanned", "processed", "skipped", "errors", "quarantined", "items")


def cronjob_mirror(cronjob: Mapping[str, Any]) -> dict[str, Any]:
    """The status fields copied from the CronJob: its running Jobs (names and count), its last tick.

    ``activeJobs`` spells the names out for the ``-o wide`` JOBS column (a printer column shows a
    list as JSON). With no Job running, the progress of the last one goes too.
    """
    cron_status = cronjob.get("status") or {}
    names = sorted(ref.get("name", "") for ref in cron_status.get("active") or [])
    mirrored: dict[str, Any] = {
        "active": names or None,
        "activeJobs": ", ".join(names) or None,
        "activeCount": len(names),
        "lastScheduleTime": cron_status.get("lastScheduleTime"),
    }
    if not names:
        mirrored["progress"] = None
    return mirrored


# --- finished Jobs ---------------------------------------------------------------------------------
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
    finished = true_conditions(job)
    final = finished.get("Complete") or finished.get("Failed") or {}
    start = parse_time(summary.get("started")) or parse_time(job_status.get("startTime"))
    end = (
        parse_time(summary.get("finished"))
        or parse_time(job_status.get("completionTime"))
        or parse_time(final.get("lastTransitionTime"))
    )
    kube_outcome = job_outcome(job)
    outcome = summary.get("outcome") or kube_outcome
    if kube_outcome == OUTCOME_DEADLINE_EXCEEDED:
        outcome = kube_outcome
    record: dict[str, Any] = {"job": job["metadata"]["name"], "start": format_time(start), "end": format_time(end)}
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
        record["end"] = format_time(now)
    runs = _dedupe([record, *previous_runs])
    runs.sort(key=lambda run: parse_time(run.get("end")) or datetime.min.replace(tzinfo=UTC), reverse=True)
    runs = runs[:RECENT_RUNS_LIMIT]
    new["lastRun"] = runs[0]
    new["recentRuns"] = runs
    end = parse_time(record["end"]) or now
    last_success = parse_time(new.get("lastSuccessfulTime"))
    last_failure = parse_time(new.get("lastFailureTime"))
    failures = new.get("consecutiveFailures") or 0
    if job_succeeded(job):
        new["lastSuccessfulTime"] = format_time(max(filter(None, (last_success, end))))
        if last_failure is None or end >= last_failure:
            failures = 0
    elif record.get("outcome") != OUTCOME_LEASE_NOT_ACQUIRED:
        new["lastFailureTime"] = format_time(max(filter(None, (last_failure, end))))
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
    last_success = parse_time(status.get("lastSuccessfulTime"))
    if last_success is not None:
        if now - last_success > limit:
            return (
                "True",
                "NoRecentSuccess",
                f"the last success, at {format_time(last_success)}, is older than {STALE_PERIODS} schedule periods "
                f"({_duration(limit)})",
            )
        return "False", "RecentSuccess", f"succeeded at {format_time(last_success)}, within {_duration(limit)}"
    runs = [run for run in [status.get("lastRun"), *(status.get("recentRuns") or [])] if isinstance(run, Mapping)]
    starts = [t for t in (parse_time(run.get("start")) or parse_time(run.get("end")) for run in runs) if t is not None]
    since = created or (min(starts) if starts else None)
    if since is None:
        return "False", "NoRunsYet", "no run has finished yet"
    if now - since > limit:
        return (
            "True",
            "NeverSucceeded",
            f"no successful run since {format_time(since)}, "
            f"more than {STALE_PERIODS} schedule periods ({_duration(limit)}) ago",
        )
    return "False", "WithinFirstPeriods", f"no success yet, but {format_time(since)} is within {_duration(limit)}"


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
    transition = format_time(now)
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


def current_invalid(status: Mapping[str, Any]) -> str | None:
    """The message of a true InvalidSpec condition, if any."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == CONDITION_INVALID_SPEC and condition.get("status") == "True":
            return str(condition.get("message") or "invalid spec")
    return None


def with_conditions(
    status: dict[str, Any],
    created: datetime | None,
    spec: SessionProcessorSpec | None,
    now: datetime,
    invalid: str | None,
) -> dict[str, Any]:
    """``status`` with its conditions recomputed for ``now``; ``created`` is the processor's creation time."""
    period = None
    if spec is not None and invalid is None:
        try:
            period = schedule.schedule_period(schedule.normalize_schedule(spec.schedule))
        except schedule.InvalidSchedule:
            period = None
    status["conditions"] = conditions(status, spec, now, period, invalid, created=created)
    return status


def next_schedule_time(spec: SessionProcessorSpec | None, now: datetime) -> str | None:
    """``status.nextScheduleTime``: when the schedule fires next; unset while suspended or unknown."""
    if spec is None or spec.suspend:
        return None
    try:
        fire = schedule.next_fire(schedule.normalize_schedule(spec.schedule), now, spec.time_zone)
    except (schedule.InvalidSchedule, ValueError):
        return None
    return format_time(fire)


# --- time -------------------------------------------------------------------------------------------
def parse_time(value: Any) -> datetime | None:
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


def format_time(moment: datetime | None) -> str | None:
    """``moment`` as the API server writes times: UTC, whole seconds, ``Z``."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    return "".join(parts) or "0m"
