"""SessionProcessors in the fake API server, and the kopf indexes the handlers would be given."""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from sessionpipe_contract import API_GROUP, API_VERSION, KIND, LABEL_INSTANCE
from sessionpipe_operator import reconcile, writers
from sessionpipe_operator.k8s import cronjob_path, job_path, pod_path, sessionprocessor_path
from sessionpipe_operator.objects import SessionProcessor
from sessionpipe_operator.state import Key, OperatorState
from tests.unit.operator.fake_kube import FakeKube

NS = "team"
NEVER = "0 0 1 1 *"


def spec(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "processor": "usage",
        "schedule": NEVER,
        "sessions": {"claimName": "transcripts"},
        "database": {"claimName": "warehouse"},
    }
    base.update(changes)
    return base


def create(
    kube: FakeKube, name: str, body_spec: Mapping[str, Any] | None = None, namespace: str = NS
) -> dict[str, Any]:
    """A SessionProcessor, as ``kubectl apply`` would create it (the fake's clock orders creations)."""
    manifest = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": copy.deepcopy(dict(body_spec or spec())),
    }
    return kube.create(sessionprocessor_path(namespace), manifest)


def read(kube: FakeKube, name: str, namespace: str = NS) -> SessionProcessor:
    body = kube.objects.get(sessionprocessor_path(namespace, name))
    assert body is not None, f"SessionProcessor {name} is gone"
    return SessionProcessor.parse(copy.deepcopy(body))


def cronjob(kube: FakeKube, name: str, namespace: str = NS) -> dict[str, Any] | None:
    found = kube.objects.get(cronjob_path(namespace, name))
    return copy.deepcopy(found) if found is not None else None


def jobs(kube: FakeKube, name: str, namespace: str = NS) -> list[dict[str, Any]]:
    return [
        copy.deepcopy(job)
        for path, job in sorted(kube.objects.items())
        if path.startswith(job_path(namespace) + "/") and job["metadata"].get("labels", {}).get(LABEL_INSTANCE) == name
    ]


def condition(processor: SessionProcessor, kind: str) -> dict[str, Any]:
    found = [c for c in processor.status.get("conditions") or [] if c.get("type") == kind]
    assert found, f"no {kind} condition in {processor.status}"
    return dict(found[0])


def by_database(kube: FakeKube, namespace: str = NS) -> dict[writers.WriterKey, list[writers.Holder]]:
    """The ``sessionprocessors_by_database`` index over what the fake holds now."""
    index: dict[writers.WriterKey, list[writers.Holder]] = defaultdict(list)
    for path, body in sorted(kube.objects.items()):
        if not path.startswith(sessionprocessor_path(namespace) + "/"):
            continue
        meta = body["metadata"]
        for key, holder in writers.index_entry(
            namespace, meta["name"], meta["creationTimestamp"], body["spec"]
        ).items():
            index[key].append(holder)
    return dict(index)


def bodies(kube: FakeKube, namespace: str = NS) -> dict[Key, list[dict[str, Any]]]:
    """The ``sessionprocessor_bodies`` index over what the fake holds now."""
    index = {}
    for path, body in sorted(kube.objects.items()):
        if path.startswith(sessionprocessor_path(namespace) + "/"):
            meta = body["metadata"]
            index[(namespace, meta["name"])] = [
                {
                    "spec": copy.deepcopy(body["spec"]),
                    "status": copy.deepcopy(body.get("status") or {}),
                    "metadata": {"uid": meta["uid"], "creationTimestamp": meta["creationTimestamp"]},
                }
            ]
    return index


def finished_job(kube: FakeKube, name: str, job_name: str, condition_type: str, **failed: str) -> dict[str, Any]:
    """A Job of processor ``name`` that ended with ``condition_type`` (Complete, Failed…)."""
    cond = {"type": condition_type, "status": "True", "lastTransitionTime": "2026-01-01T00:05:00Z", **failed}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name, "labels": {LABEL_INSTANCE: name, "sessionpipe.io/processor": "usage"}},
        "spec": {},
        "status": {"startTime": "2026-01-01T00:04:00Z", "conditions": [cond]},
    }
    return kube.create(job_path(NS), job)


def pod_with_message(kube: FakeKube, job_name: str, message: str, exit_code: int = 0) -> dict[str, Any]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{job_name}-pod", "labels": {"batch.kubernetes.io/job-name": job_name}},
        "status": {
            "containerStatuses": [
                {
                    "name": "runner",
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else "Error",
                            "finishedAt": "2026-01-01T00:05:00Z",
                            "message": message,
                        }
                    },
                }
            ]
        },
    }
    return kube.create(pod_path(NS), pod)


def reconcile_named(
    state: OperatorState, kube: FakeKube, name: str, logger: logging.Logger, index: object = None
) -> None:
    """What the reconcile handler does for ``name``, with the index as it stands (or ``index``)."""
    reconcile.reconcile_processor(state, read(kube, name), by_database(kube) if index is None else index, logger)
