"""Status rules: finished Jobs become run records and counters; conditions follow; replays change nothing."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sessionpipe_contract import SUMMARY_KEYS, TERMINATION_MESSAGE_LIMIT
from sessionpipe_operator.jobs import job_is_active, job_outcome
from sessionpipe_operator.models import SessionProcessorSpec, SessionProcessorStatus
from sessionpipe_operator.run_summary import parse_run_summary
from sessionpipe_operator.status import apply_job_event, conditions, cronjob_mirror, run_record, set_condition

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SPEC = SessionProcessorSpec.model_validate(
    {
        "processor": "usage",
        "schedule": "*/15 * * * *",
        "sessions": {"claimName": "transcripts"},
        "database": {"claimName": "warehouse"},
    }
)
PERIOD = timedelta(minutes=15)
DAY = timedelta(days=1)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def job(name: str, state: str, end: datetime = NOW, reason: str = "", message: str = "") -> dict[str, Any]:
    """A Job as the API server reports it: ``running``, ``complete`` or ``failed`` (with a reason)."""
    start = end - timedelta(minutes=2)
    status: dict[str, Any] = {"startTime": stamp(start)}
    if state == "running":
        status["active"] = 1
    elif state == "complete":
        status.update(
            succeeded=1,
            completionTime=stamp(end),
            conditions=[
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": stamp(end)},
                {"type": "Complete", "status": "True", "lastTransitionTime": stamp(end)},
            ],
        )
    elif state == "failed":
        status.update(
            failed=1,
            conditions=[
                {"type": "FailureTarget", "status": "True", "reason": reason, "lastTransitionTime": stamp(end)},
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": stamp(end),
                },
            ],
        )
    elif state == "failing":  # the failure is decided but a pod is still terminating
        status.update(
            active=1,
            conditions=[
                {"type": "FailureTarget", "status": "True", "reason": reason, "lastTransitionTime": stamp(end)}
            ],
        )
    return {"metadata": {"name": name, "namespace": "team-a", "uid": f"uid-{name}"}, "status": status}


def summary(outcome: str = "succeeded", processed: int = 4, errors: int = 0, end: datetime = NOW) -> dict[str, Any]:
    text = json.dumps(
        {
            "processor": "usage",
            "processor_version": "3",
            "run_id": "r1",
            "outcome": outcome,
            "exit_code": 0,
            "started": stamp(end - timedelta(seconds=90)),
            "finished": stamp(end - timedelta(seconds=5)),
            "duration_seconds": 85.25,
            "scanned": 10,
            "unchanged": 6,
            "hashed": 4,
            "processed": processed,
            "skipped": 6,
            "errors": errors,
            "quarantined": 0,
            "items": 120,
            "issues": {"bad_json_line": 2},
            "message": "",
        }
    )
    parsed = parse_run_summary(text)
    assert parsed is not None
    return parsed


# --- the runner's summary ------------------------------------------------------------------------------
def test_a_summary_keeps_the_known_keys_with_sound_values() -> None:
    message = json.dumps(
        {
            "outcome": "completed_with_errors",
            "processed": 7,
            "errors": "3",  # wrong type: dropped, the rest kept
            "skipped": -1,  # impossible: dropped
            "items": True,  # a bool is not a count
            "duration_seconds": 12,
            "started": "2026-06-01T11:58:00Z",
            "issues": {"bad_json_line": 1},
            "counters": {"llm_calls": 4, "llm_tokens": 10400, "Bad Name": 1, "negative": -1, "text": "9", "flag": True},
            "secret_field": "not ours",
        }
    )
    parsed = parse_run_summary(message)
    assert parsed == {
        "outcome": "completed_with_errors",
        "processed": 7,
        "duration_seconds": 12.0,
        "started": "2026-06-01T11:58:00Z",
        "issues": {"bad_json_line": 1},
        "counters": {"llm_calls": 4, "llm_tokens": 10400},
    }
    assert set(parsed) <= set(SUMMARY_KEYS)


def test_a_summary_keeps_a_bounded_number_of_counters() -> None:
    """Each counter name becomes a metric label value: a processor must not flood the registry."""
    message = json.dumps({"outcome": "succeeded", "counters": {f"c{n:02d}": n for n in range(40)}})
    parsed = parse_run_summary(message)
    assert parsed is not None and list(parsed["counters"]) == [f"c{n:02d}" for n in range(32)]


def test_the_cronjob_mirror_counts_running_jobs_and_names_them() -> None:
    running = {"status": {"active": [{"name": "usage-2"}, {"name": "usage-1"}], "lastScheduleTime": "T"}}
    assert cronjob_mirror(running) == {
        "active": ["usage-1", "usage-2"],
        "activeJobs": "usage-1, usage-2",  # the JOBS column prints names, not a JSON array
        "activeCount": 2,
        "lastScheduleTime": "T",
    }
    # none running: the names and the last run's progress go (null removes them), the count says 0
    assert cronjob_mirror({"status": {}}) == {
        "active": None,
        "activeJobs": None,
        "activeCount": 0,
        "lastScheduleTime": None,
        "progress": None,
    }


def test_a_summary_is_found_at_the_end_of_a_log_tail() -> None:
    tail = "INFO scanning /data/sessions\nWARNING slow disk\n" + json.dumps({"outcome": "failed", "errors": 2}) + "\n"
    assert parse_run_summary(tail) == {"outcome": "failed", "errors": 2}


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "",
        "   \n",
        "Traceback (most recent call last):\n  File 'x', line 1\nMemoryError",
        '{"outcome": "succeeded", "processed": 3',  # cut off at the kubelet's limit
        ('{"outcome": "succeeded", "message": "' + "x" * TERMINATION_MESSAGE_LIMIT)[:TERMINATION_MESSAGE_LIMIT],
        "[1, 2, 3]",
        "null",
        '"succeeded"',
        '{"unknown": 1, "other": [2]}',
        "\x00\xff\ufffd{}",
        "{}",
        '{"outcome": 42, "processed": "many"}',
    ],
)
def test_garbage_termination_messages_yield_no_summary(garbage: str | None) -> None:
    assert parse_run_summary(garbage) is None


# --- Jobs ----------------------------------------------------------------------------------------------
def test_job_activity_and_outcome_follow_the_final_condition() -> None:
    assert job_is_active(job("a", "running")) and job_outcome(job("a", "running")) is None
    failing = job("b", "failing", reason="PodFailurePolicy")
    assert job_is_active(failing) and job_outcome(failing) is None
    assert not job_is_active(job("c", "complete")) and job_outcome(job("c", "complete")) == "succeeded"
    timed_out = job("d", "failed", reason="DeadlineExceeded", message="Job was active longer than specified deadline")
    assert not job_is_active(timed_out) and job_outcome(timed_out) == "deadline_exceeded"
    lease = job(
        "e",
        "failed",
        reason="PodFailurePolicy",
        message="Container runner for pod team-a/e-x failed with exit code 75 matching FailJob rule at index 0",
    )
    assert job_outcome(lease) == "lease_not_acquired"
    crashed = job("f", "failed", reason="BackoffLimitExceeded", message="Job has reached the specified backoff limit")
    assert job_outcome(crashed) == "failed"


def test_run_record_prefers_the_runners_account_and_falls_back_to_the_job() -> None:
    record = run_record(job("usage-1", "complete"), summary(processed=4, errors=1, outcome="completed_with_errors"))
    assert record == {
        "job": "usage-1",
        "start": stamp(NOW - timedelta(seconds=90)),
        "end": stamp(NOW - timedelta(seconds=5)),
        "outcome": "completed_with_errors",
        "scanned": 10,
        "processed": 4,
        "skipped": 6,
        "errors": 1,
        "quarantined": 0,
        "items": 120,
        "duration": 85.25,
    }
    bare = run_record(job("usage-2", "failed", reason="BackoffLimitExceeded"), None)
    assert bare == {
        "job": "usage-2",
        "start": stamp(NOW - timedelta(minutes=2)),
        "end": stamp(NOW),
        "outcome": "failed",
        "duration": 120.0,
        "message": "BackoffLimitExceeded",  # no summary: Kubernetes says why
    }
    # A deadline is the cause to report, though the runner (stopped by SIGTERM) says "terminated".
    timed_out = run_record(job("usage-3", "failed", reason="DeadlineExceeded"), summary(outcome="terminated"))
    assert timed_out["outcome"] == "deadline_exceeded"
    SessionProcessorStatus.model_validate({"lastRun": record, "recentRuns": [record, bare, timed_out]})


# --- folding Jobs into the status --------------------------------------------------------------------------
def test_a_success_and_a_failure_update_times_counters_and_runs() -> None:
    status: dict[str, Any] = {"cronJobName": "usage", "observedGeneration": 1}
    first = apply_job_event(status, job("usage-1", "complete", end=NOW), summary(end=NOW), NOW)
    assert first["lastSuccessfulTime"] == stamp(NOW - timedelta(seconds=5))
    assert first["consecutiveFailures"] == 0
    assert first["lastRun"]["job"] == "usage-1"
    assert [run["job"] for run in first["recentRuns"]] == ["usage-1"]
    assert status == {"cronJobName": "usage", "observedGeneration": 1}  # the input is left alone

    later = NOW + timedelta(minutes=15)
    second = apply_job_event(first, job("usage-2", "failed", end=later, reason="BackoffLimitExceeded"), None, later)
    assert second["lastFailureTime"] == stamp(later)
    assert second["lastSuccessfulTime"] == first["lastSuccessfulTime"]
    assert second["consecutiveFailures"] == 1
    assert [run["job"] for run in second["recentRuns"]] == ["usage-2", "usage-1"]
    assert second["lastRun"]["outcome"] == "failed"
    SessionProcessorStatus.model_validate(second)


def test_recording_the_same_job_twice_changes_nothing() -> None:
    finished = job("usage-1", "failed", reason="BackoffLimitExceeded")
    once = apply_job_event({}, finished, None, NOW)
    twice = apply_job_event(once, finished, None, NOW + timedelta(hours=1))
    assert twice == once
    assert twice["consecutiveFailures"] == 1


def test_a_running_job_changes_nothing() -> None:
    status = {"cronJobName": "usage", "consecutiveFailures": 2}
    assert apply_job_event(status, job("usage-9", "running"), None, NOW) == status
    assert apply_job_event(status, job("usage-9", "failing", reason="PodFailurePolicy"), None, NOW) == status


def test_recent_runs_are_bounded_newest_first_and_unique() -> None:
    status: dict[str, Any] = {}
    for number in range(15):
        end = NOW + timedelta(minutes=15 * number)
        status = apply_job_event(status, job(f"usage-{number}", "complete", end=end), None, end)
        status = apply_job_event(status, job(f"usage-{number}", "complete", end=end), None, end)  # a replay
    names = [run["job"] for run in status["recentRuns"]]
    assert names == [f"usage-{number}" for number in range(14, 4, -1)]
    assert status["lastRun"]["job"] == "usage-14"
    SessionProcessorStatus.model_validate(status)


def test_an_old_failure_recorded_late_does_not_count_against_a_newer_success() -> None:
    success = apply_job_event({}, job("usage-2", "complete", end=NOW), None, NOW)
    late = apply_job_event(success, job("usage-1", "failed", end=NOW - timedelta(hours=1), reason="X"), None, NOW)
    assert late["consecutiveFailures"] == 0
    assert late["lastRun"]["job"] == "usage-2"  # still the newest run
    assert late["lastFailureTime"] == stamp(NOW - timedelta(hours=1))
    assert [run["job"] for run in late["recentRuns"]] == ["usage-2", "usage-1"]


def test_a_run_skipped_for_a_held_lease_is_neither_success_nor_failure() -> None:
    failed = apply_job_event({}, job("usage-1", "failed", end=NOW, reason="X"), None, NOW)
    skipped_job = job(
        "usage-2",
        "failed",
        end=NOW + PERIOD,
        reason="PodFailurePolicy",
        message="Container runner for pod team-a/usage-2-x failed with exit code 75 matching FailJob rule at index 0",
    )
    skipped = apply_job_event(failed, skipped_job, None, NOW + PERIOD)
    assert skipped["consecutiveFailures"] == 1
    assert skipped["lastFailureTime"] == failed["lastFailureTime"]
    assert "lastSuccessfulTime" not in skipped
    assert skipped["lastRun"]["outcome"] == "lease_not_acquired"


# --- conditions ---------------------------------------------------------------------------------------------
def by_type(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {condition["type"]: condition for condition in found}


def test_degraded_is_set_by_failures_and_cleared_by_a_success() -> None:
    status: dict[str, Any] = {"cronJobName": "usage"}
    for number in range(2):
        end = NOW + number * PERIOD
        status = apply_job_event(status, job(f"usage-{number}", "failed", end=end, reason="X"), None, end)
        status["conditions"] = conditions(status, SPEC, end, PERIOD, None)
    found = by_type(status["conditions"])
    assert found["Degraded"]["status"] == "True"
    assert "2" in found["Degraded"]["message"]
    assert found["Degraded"]["lastTransitionTime"] == stamp(NOW)  # set by the first failure, kept by the second
    assert found["Ready"]["status"] == "False"

    healed_at = NOW + 2 * PERIOD
    status = apply_job_event(status, job("usage-2", "complete", end=healed_at), None, healed_at)
    status["conditions"] = conditions(status, SPEC, healed_at, PERIOD, None)
    found = by_type(status["conditions"])
    assert found["Degraded"]["status"] == "False"
    assert found["Degraded"]["lastTransitionTime"] == stamp(healed_at)
    assert found["Ready"]["status"] == "True"
    SessionProcessorStatus.model_validate(status)


def test_stale_after_twice_the_period_without_success() -> None:
    last_success = NOW - 2 * PERIOD
    status = {"cronJobName": "usage", "lastSuccessfulTime": stamp(last_success)}
    fresh = by_type(conditions(status, SPEC, NOW, PERIOD, None))
    assert fresh["Stale"]["status"] == "False"
    late = by_type(conditions(status, SPEC, NOW + timedelta(minutes=1), PERIOD, None))
    assert late["Stale"]["status"] == "True"
    assert late["Ready"]["status"] == "False"
    assert "30m" in late["Stale"]["message"]
    # A suspended processor is not expected to run, so it is never stale.
    suspended = SessionProcessorSpec.model_validate({**SPEC.model_dump(by_alias=True), "suspend": True})
    assert by_type(conditions(status, suspended, NOW + DAY, PERIOD, None))["Stale"]["status"] == "False"


def test_stale_without_any_success_since_creation() -> None:
    status = {"cronJobName": "usage"}
    created = NOW - timedelta(hours=1)
    assert by_type(conditions(status, SPEC, NOW, PERIOD, None, created=created))["Stale"]["status"] == "True"
    young = by_type(conditions(status, SPEC, NOW, PERIOD, None, created=NOW - timedelta(minutes=10)))
    assert young["Stale"]["status"] == "False"
    # Without the creation time, the first recorded run is where the wait for a success began.
    failing = apply_job_event(status, job("usage-1", "failed", end=NOW - timedelta(hours=2), reason="X"), None, NOW)
    assert by_type(conditions(failing, SPEC, NOW, PERIOD, None))["Stale"]["status"] == "True"
    assert by_type(conditions(status, SPEC, NOW, PERIOD, None))["Stale"]["status"] == "False"


def test_invalid_spec_makes_ready_false_and_says_why() -> None:
    found = by_type(conditions({"cronJobName": "usage"}, SPEC, NOW, None, "spec.schedule: 'every 7m' ..."))
    assert found["InvalidSpec"]["status"] == "True"
    assert found["InvalidSpec"]["message"].startswith("spec.schedule")
    assert found["Ready"]["status"] == "False" and found["Ready"]["reason"] == "InvalidSpec"
    assert found["Stale"]["status"] == "Unknown"


def test_conditions_are_stable_when_nothing_changed() -> None:
    status: dict[str, Any] = {"cronJobName": "usage", "lastSuccessfulTime": stamp(NOW), "observedGeneration": 3}
    status["conditions"] = conditions(status, SPEC, NOW, PERIOD, None)
    again = conditions(copy.deepcopy(status), SPEC, NOW + timedelta(minutes=5), PERIOD, None)
    assert again == status["conditions"]
    assert [c["type"] for c in again] == ["Ready", "Stale", "Degraded", "InvalidSpec"]
    assert all(c["observedGeneration"] == 3 for c in again)
    SessionProcessorStatus.model_validate(status)


def test_set_condition_moves_the_transition_time_only_when_the_status_changes() -> None:
    first = set_condition([], "Ready", "True", "Scheduled", "ok", NOW)
    same = set_condition(first, "Ready", "True", "Scheduled", "still ok", NOW + DAY)
    assert same[0]["lastTransitionTime"] == stamp(NOW) and same[0]["message"] == "still ok"
    flipped = set_condition(same, "Ready", "False", "Degraded", "broken", NOW + 2 * DAY)
    assert flipped[0]["lastTransitionTime"] == stamp(NOW + 2 * DAY)
    assert len(flipped) == 1
