"""A failed run always says why in ``lastRun.message``, even when its runner wrote no summary.

The cause then comes from Kubernetes: the Job's ``Failed`` condition (BackoffLimitExceeded,
DeadlineExceeded, PodFailurePolicy) and the state of its pod's container (a start error such as
E2BIG, OOMKilled, an image that cannot be pulled). Shapes below are as the API server reports them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sessionpipe_operator.jobs import failure_reason, termination_message
from sessionpipe_operator.models import MAX_RUN_MESSAGE, SessionProcessorStatus
from sessionpipe_operator.run_summary import parse_run_summary
from sessionpipe_operator.status import apply_job_event, run_record

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def failed_job(reason: str, message: str, name: str = "usage-1") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "team-a", "uid": f"uid-{name}"},
        "status": {
            "startTime": stamp(NOW - timedelta(minutes=2)),
            "failed": 1,
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": stamp(NOW),
                },
            ],
        },
    }


def complete_job(name: str = "usage-1") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "team-a", "uid": f"uid-{name}"},
        "status": {
            "startTime": stamp(NOW - timedelta(minutes=2)),
            "completionTime": stamp(NOW),
            "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": stamp(NOW)}],
        },
    }


def pod(state: dict[str, Any], created: datetime = NOW - timedelta(minutes=2), **pod_status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": f"usage-1-{created:%H%M%S}", "creationTimestamp": stamp(created)},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "runner", "state": state}], **pod_status},
    }


E2BIG = (
    "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create "
    'failed: unable to start container process: exec: "sessionpipe": argument list too long: unknown'
)


def test_a_container_that_could_not_start_says_so_with_the_runtimes_message() -> None:
    job = failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    pods = [pod({"terminated": {"exitCode": 128, "reason": "StartError", "message": E2BIG}})]
    reason = failure_reason(job, pods)
    assert reason is not None
    assert reason.startswith("BackoffLimitExceeded: Job has reached the specified backoff limit")
    assert "container runner: StartError (exit code 128)" in reason
    assert "argument list too long" in reason
    record = run_record(job, parse_run_summary(termination_message(pods)), pods)
    assert record["outcome"] == "failed"
    assert record["message"] == reason


def test_oom_killed_names_the_kill() -> None:
    job = failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    pods = [pod({"terminated": {"exitCode": 137, "reason": "OOMKilled"}})]
    assert "container runner: OOMKilled (exit code 137)" in str(failure_reason(job, pods))


def test_a_deadline_while_the_image_cannot_be_pulled_names_both() -> None:
    job = failed_job("DeadlineExceeded", "Job was active longer than specified deadline")
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "nowhere/job:1"'}}
    pods = [pod(waiting, phase="Pending")]
    record = run_record(job, None, pods)
    assert record["outcome"] == "deadline_exceeded"
    assert record["message"] == (
        "DeadlineExceeded: Job was active longer than specified deadline; "
        'container runner waiting: ImagePullBackOff: Back-off pulling image "nowhere/job:1"'
    )


def test_a_job_whose_pods_are_gone_still_says_why_from_its_condition() -> None:
    job = failed_job("DeadlineExceeded", "Job was active longer than specified deadline")
    assert run_record(job, None, [])["message"] == "DeadlineExceeded: Job was active longer than specified deadline"


def test_a_pod_that_never_got_a_container_reports_its_own_reason() -> None:
    job = failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    evicted = {
        "metadata": {"name": "usage-1-x", "creationTimestamp": stamp(NOW)},
        "status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."},
    }
    assert failure_reason(job, [evicted]) == (
        "BackoffLimitExceeded: Job has reached the specified backoff limit; "
        "pod Evicted: The node was low on resource: memory."
    )


def test_the_newest_pod_speaks_for_the_run() -> None:
    job = failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    old = pod({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}, created=NOW - timedelta(minutes=5))
    new = pod({"terminated": {"exitCode": 2, "reason": "Error"}}, created=NOW - timedelta(minutes=1))
    assert "container runner: Error (exit code 2)" in str(failure_reason(job, [new, old]))
    assert "OOMKilled" not in str(failure_reason(job, [new, old]))


def test_the_runners_own_message_wins_when_it_wrote_one() -> None:
    job = failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    text = json.dumps({"outcome": "failed", "exit_code": 1, "message": "the database file is not a DuckDB file"})
    pods = [pod({"terminated": {"exitCode": 1, "reason": "Error", "message": text}})]
    record = run_record(job, parse_run_summary(termination_message(pods)), pods)
    assert record["message"] == "the database file is not a DuckDB file"


def test_a_summary_without_a_message_gets_the_kubernetes_reason() -> None:
    job = failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    text = json.dumps({"outcome": "failed", "exit_code": 1, "message": ""})
    pods = [pod({"terminated": {"exitCode": 1, "reason": "Error", "message": text}})]
    message = run_record(job, parse_run_summary(termination_message(pods)), pods)["message"]
    assert message.startswith("BackoffLimitExceeded")
    assert "container runner: Error (exit code 1)" in message
    assert text not in message  # the summary itself is not repeated as the reason


def test_a_log_tail_termination_message_contributes_its_last_line() -> None:
    job = failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    tail = "Traceback (most recent call last):\n  File x\nModuleNotFoundError: No module named 'duckdb'\n"
    pods = [pod({"terminated": {"exitCode": 1, "reason": "Error", "message": tail}})]
    reason = str(failure_reason(job, pods))
    assert reason.endswith("container runner: Error (exit code 1): ModuleNotFoundError: No module named 'duckdb'")


def test_a_success_carries_no_message_and_a_long_reason_is_cut_to_fit_the_schema() -> None:
    assert "message" not in run_record(complete_job(), None, [])
    assert failure_reason(complete_job(), []) is None
    job = failed_job("BackoffLimitExceeded", "x" * 5000)
    record = run_record(job, None, [])
    assert len(record["message"]) == MAX_RUN_MESSAGE
    SessionProcessorStatus.model_validate({"lastRun": record})


def test_the_recorded_status_carries_the_message_into_last_run_and_recent_runs() -> None:
    job = failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    pods = [pod({"terminated": {"exitCode": 128, "reason": "StartError", "message": E2BIG}})]
    status = apply_job_event({}, job, None, NOW, pods)
    assert "argument list too long" in status["lastRun"]["message"]
    assert status["recentRuns"][0] == status["lastRun"]
    SessionProcessorStatus.model_validate(status)
