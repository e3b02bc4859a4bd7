"""What a Job and its pods say: whether it runs, how it ended, and why it did not succeed.

Pure functions over Jobs and pods as the API server returns them (plain dicts). A Job is finished
once it carries its *final* condition, ``Complete`` or ``Failed``. Since Kubernetes 1.31 a Job first
gets ``SuccessCriteriaMet`` (or ``FailureTarget``) and only then, once its last pod is gone, the final
condition: until then a pod may still be terminating, so the Job still counts as running and is not
recorded yet. Every question here is answered from the final conditions alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sessionpipe_contract import EXIT_LEASE_NOT_ACQUIRED, OUTCOME_FAILED, OUTCOME_LEASE_NOT_ACQUIRED, OUTCOME_SUCCEEDED
from sessionpipe_operator.models import MAX_RUN_MESSAGE

#: The Job ran out of ``activeDeadlineSeconds`` (``run.timeoutSeconds``).
OUTCOME_DEADLINE_EXCEEDED = "deadline_exceeded"
#: The label the Job controller puts on a Job's pods.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
_MAX_DETAIL = 400  # of one container's message: a runtime error, a log line


def true_conditions(job: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The Job's conditions whose status is ``True``, by type."""
    conditions = (job.get("status") or {}).get("conditions") or []
    return {c.get("type", ""): c for c in conditions if isinstance(c, Mapping) and c.get("status") == "True"}


def job_is_active(job: Mapping[str, Any]) -> bool:
    """Whether the Job has not finished: neither ``Complete`` nor ``Failed`` yet.

    A Job marked ``FailureTarget``/``SuccessCriteriaMet`` may still have a pod terminating, so it
    counts as active until its final condition: no second run may start beside it.
    """
    finished = true_conditions(job)
    return "Complete" not in finished and "Failed" not in finished


def job_succeeded(job: Mapping[str, Any]) -> bool:
    """Whether the Job finished successfully: ``Complete``.

    ``SuccessCriteriaMet`` alone is not enough: it precedes ``Complete`` while the Job's last pods
    terminate, and a Job counts as running until then (:func:`job_is_active`).
    """
    return "Complete" in true_conditions(job)


def job_outcome(job: Mapping[str, Any]) -> str | None:
    """How the Job ended as Kubernetes saw it; ``None`` while it runs.

    ``succeeded``, ``deadline_exceeded`` (``run.timeoutSeconds`` ran out), ``lease_not_acquired``
    (the pod failure policy matched the runner's exit code for it), or ``failed``.
    """
    if job_succeeded(job):
        return OUTCOME_SUCCEEDED
    failed = true_conditions(job).get("Failed")
    if failed is None:
        return None
    reason = str(failed.get("reason") or "")
    if reason == "DeadlineExceeded":
        return OUTCOME_DEADLINE_EXCEEDED
    if reason == "PodFailurePolicy" and f"exit code {EXIT_LEASE_NOT_ACQUIRED}" in str(failed.get("message") or ""):
        return OUTCOME_LEASE_NOT_ACQUIRED
    return OUTCOME_FAILED


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
    failed = true_conditions(job).get("Failed")
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
