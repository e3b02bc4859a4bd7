"""Child manifests of a SessionProcessor, as pure functions: spec in, manifest out.

:func:`build_cronjob` renders the one CronJob a SessionProcessor owns; :func:`build_run_now_job` makes
an immediate run from that CronJob's template; :func:`cronjob_drifted` says whether a CronJob on the
cluster still carries what was rendered. Nothing here talks to the API server.

Why this file is just over 400 lines: what is rendered and what counts as drift from it are one
contract (each optional or exact-compared path below names a field :func:`build_cronjob` writes), so
they stay side by side; most of the length is the manifest itself.
"""

from __future__ import annotations

import copy
import hashlib
import posixpath
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from sessionpipe_contract import (
    ANNOTATION_RUN_NOW_TOKEN,
    DEFAULT_DATABASE_MOUNT,
    DEFAULT_TERMINATION_LOG,
    ENV_ANTHROPIC_API_KEY,
    ENV_CONFIG,
    ENV_DB,
    ENV_LEASE,
    ENV_LEASE_WAIT,
    ENV_LLM_MAX_TOKENS_PER_RUN,
    ENV_LLM_MODEL,
    ENV_LOG_FORMAT,
    ENV_MAX_ATTEMPTS,
    ENV_MAX_SESSIONS,
    ENV_POD_NAME,
    ENV_POD_NAMESPACE,
    ENV_PRICING,
    ENV_PROCESSOR,
    ENV_SESSIONS,
    ENV_TERMINATION_LOG,
    EXIT_LEASE_NOT_ACQUIRED,
    LABEL_DATABASE,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_PROCESSOR,
    LABEL_RUN_KIND,
    MANAGED_BY,
)
from sessionpipe_operator.models import SessionProcessorSpec, config_json
from sessionpipe_operator.schedule import normalize_schedule
from sessionpipe_operator.settings import OperatorSettings

CONTAINER_NAME = "runner"
RUNNER_COMMAND = ("sessionpipe", "run")
#: The job image's user (Dockerfile.job); fsGroup makes the database volume writable for it.
RUNNER_UID = 10001
RUN_KIND_SCHEDULED = "scheduled"
RUN_KIND_RUN_NOW = "run-now"
LABEL_APP_NAME = "app.kubernetes.io/name"
APP_NAME = "sessionpipe"
#: ``kubectl create job --from=cronjob/...`` marks its Jobs this way; the CronJob controller and
#: dashboards know it.
ANNOTATION_INSTANTIATE = "cronjob.kubernetes.io/instantiate"
TMP_MOUNT = "/tmp"
VOLUME_SESSIONS = "sessions"
VOLUME_DATABASE = "database"
VOLUME_TMP = "tmp"
VOLUME_PRICING = "pricing"
#: Where a spec.pricing ConfigMap key is mounted, as one file the runner reads through SESSIONPIPE_PRICING.
PRICING_MOUNT = "/etc/sessionpipe/pricing"
PRICING_FILE = "pricing.json"

# Fields build_cronjob renders only sometimes: when it does not, their presence on the cluster is drift
# (a spec that dropped ``timeZone`` must drop it from the CronJob too).
_POD = ("spec", "jobTemplate", "spec", "template", "spec")
_OPTIONAL_PATHS: tuple[tuple[str, ...], ...] = (
    ("spec", "timeZone"),
    ("spec", "jobTemplate", "metadata", "annotations"),
    ("spec", "jobTemplate", "spec", "template", "metadata", "annotations"),
    (*_POD, "serviceAccountName"),
    (*_POD, "nodeSelector"),
    (*_POD, "tolerations"),
    (*_POD, "affinity"),
)
# Maps compared whole, not as a subset: a label or annotation the spec no longer has must go.
_EXACT_PATHS: tuple[tuple[str, ...], ...] = (
    ("spec", "jobTemplate", "metadata", "labels"),
    ("spec", "jobTemplate", "spec", "template", "metadata", "labels"),
    ("spec", "jobTemplate", "spec", "template", "metadata", "annotations"),
    (*_POD, "nodeSelector"),
)


def database_key(claim: str, path: str) -> str:
    """A short, stable, label-safe name for the database file ``path`` on the claim ``claim``.

    Processors writing one file share it (as the ``sessionpipe.io/database`` label and in the derived
    Lease name), however the path is spelled (``./a.duckdb`` and ``a.duckdb`` are one file).
    """
    normalized = posixpath.normpath(path.strip("/"))
    return hashlib.sha256(f"{claim}\0{normalized}".encode()).hexdigest()[:16]


def lease_name_for(spec: SessionProcessorSpec) -> str:
    """The Lease that serialises writers of the spec's database: ``database.leaseName`` or derived."""
    return spec.database.lease_name or f"sessionpipe-db-{database_key(spec.database.claim_name, spec.database.path)}"


def database_file(spec: SessionProcessorSpec) -> str:
    """Where the job pod sees the database file."""
    return posixpath.join(DEFAULT_DATABASE_MOUNT, posixpath.normpath(spec.database.path))


def processor_labels(name: str, spec: SessionProcessorSpec) -> dict[str, str]:
    """The labels every object of one SessionProcessor carries (CronJob, Jobs, pods)."""
    return {
        LABEL_APP_NAME: APP_NAME,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_INSTANCE: name,
        LABEL_PROCESSOR: spec.processor,
        LABEL_DATABASE: database_key(spec.database.claim_name, spec.database.path),
    }


def build_cronjob(
    name: str, namespace: str, owner: Mapping[str, Any], spec: SessionProcessorSpec, settings: OperatorSettings
) -> dict[str, Any]:
    """The CronJob manifest for the SessionProcessor ``namespace/name`` with ``spec``.

    ``owner`` is the SessionProcessor's ``apiVersion``, ``kind``, ``name`` and ``uid``; the CronJob is
    its controlled child, so deleting the SessionProcessor deletes the CronJob and its Jobs. Raises
    :class:`~sessionpipe_operator.schedule.InvalidSchedule` for a schedule with no exact cron form.
    """
    labels = processor_labels(name, spec)
    job_labels = {**labels, LABEL_RUN_KIND: RUN_KIND_SCHEDULED}
    template = spec.pod_template
    pod_labels = {**((template.labels if template else None) or {}), **job_labels}
    pod_metadata: dict[str, Any] = {"labels": pod_labels}
    if template and template.annotations:
        pod_metadata["annotations"] = dict(template.annotations)
    cronjob_spec: dict[str, Any] = {
        "schedule": normalize_schedule(spec.schedule),
        "concurrencyPolicy": "Forbid",
        "suspend": spec.suspend,
        "startingDeadlineSeconds": spec.run.starting_deadline_seconds,
        "successfulJobsHistoryLimit": spec.history.successful,
        "failedJobsHistoryLimit": spec.history.failed,
        "jobTemplate": {
            "metadata": {"labels": job_labels},
            "spec": {
                "activeDeadlineSeconds": spec.run.timeout_seconds,
                # One attempt per run: a failed run is retried by the next tick, never beside itself.
                "backoffLimit": 0,
                "podFailurePolicy": {
                    "rules": [
                        {
                            "action": "FailJob",
                            "onExitCodes": {
                                "containerName": CONTAINER_NAME,
                                "operator": "In",
                                "values": [EXIT_LEASE_NOT_ACQUIRED],
                            },
                        },
                        {
                            # An evicted or preempted pod is not the run's failure: replace it.
                            "action": "Ignore",
                            "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                        },
                    ]
                },
                # A replacement starts only once the old pod is gone, so two runners never overlap.
                "podReplacementPolicy": "Failed",
                "template": {"metadata": pod_metadata, "spec": _pod_spec(spec, settings)},
            },
        },
    }
    if spec.time_zone:
        cronjob_spec["timeZone"] = spec.time_zone
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": owner["apiVersion"],
                    "kind": owner["kind"],
                    "name": owner["name"],
                    "uid": owner["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": cronjob_spec,
    }


def _pod_spec(spec: SessionProcessorSpec, settings: OperatorSettings) -> dict[str, Any]:
    template = spec.pod_template
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_UID,
            "runAsGroup": RUNNER_UID,
            "fsGroup": RUNNER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(spec, settings)],
        "volumes": [
            {
                "name": VOLUME_SESSIONS,
                "persistentVolumeClaim": {"claimName": spec.sessions.claim_name, "readOnly": True},
            },
            {"name": VOLUME_DATABASE, "persistentVolumeClaim": {"claimName": spec.database.claim_name}},
            {"name": VOLUME_TMP, "emptyDir": {}},
        ],
    }
    if spec.pricing is not None:
        ref = spec.pricing.config_map_ref
        pod["volumes"].append(
            {"name": VOLUME_PRICING, "configMap": {"name": ref.name, "items": [{"key": ref.key, "path": PRICING_FILE}]}}
        )
    service_account = spec.service_account_name or settings.job_service_account
    if service_account:
        pod["serviceAccountName"] = service_account
    if template and template.priority_class_name:
        pod["priorityClassName"] = template.priority_class_name
    if template and template.node_selector:
        pod["nodeSelector"] = dict(template.node_selector)
    if template and template.tolerations:
        pod["tolerations"] = copy.deepcopy(template.tolerations)
    if template and template.affinity:
        pod["affinity"] = copy.deepcopy(template.affinity)
    return pod


def _container(spec: SessionProcessorSpec, settings: OperatorSettings) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": ENV_PROCESSOR, "value": spec.processor},
        {"name": ENV_SESSIONS, "value": spec.sessions.mount_path},
        {"name": ENV_DB, "value": database_file(spec)},
        {"name": ENV_LEASE, "value": f"k8s:{lease_name_for(spec)}"},
        {"name": ENV_LEASE_WAIT, "value": str(spec.database.lease_wait_seconds)},
        {"name": ENV_MAX_SESSIONS, "value": str(spec.run.max_sessions_per_run)},
        {"name": ENV_MAX_ATTEMPTS, "value": str(spec.run.max_attempts_per_session)},
        {"name": ENV_CONFIG, "value": config_json(spec.config)},
        {"name": ENV_TERMINATION_LOG, "value": DEFAULT_TERMINATION_LOG},
        {"name": ENV_LOG_FORMAT, "value": settings.log_format},  # the runner's lines match the operator's
        {"name": ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": ENV_POD_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "TMPDIR", "value": TMP_MOUNT},
    ]
    llm = spec.llm
    if llm is not None:
        if llm.model:
            env.append({"name": ENV_LLM_MODEL, "value": llm.model})
        if llm.max_tokens_per_run is not None:
            env.append({"name": ENV_LLM_MAX_TOKENS_PER_RUN, "value": str(llm.max_tokens_per_run)})
        if llm.api_key_secret_ref is not None:
            # The key itself never appears in the CronJob: the kubelet reads it from the Secret.
            ref = llm.api_key_secret_ref
            env.append(
                {"name": ENV_ANTHROPIC_API_KEY, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
            )
    sessions_mount: dict[str, Any] = {"name": VOLUME_SESSIONS, "mountPath": spec.sessions.mount_path, "readOnly": True}
    if spec.sessions.sub_path:
        sessions_mount["subPath"] = spec.sessions.sub_path
    mounts = [
        sessions_mount,
        {"name": VOLUME_DATABASE, "mountPath": DEFAULT_DATABASE_MOUNT},
        {"name": VOLUME_TMP, "mountPath": TMP_MOUNT},
    ]
    if spec.pricing is not None:
        env.append({"name": ENV_PRICING, "value": f"{PRICING_MOUNT}/{PRICING_FILE}"})
        mounts.append({"name": VOLUME_PRICING, "mountPath": PRICING_MOUNT, "readOnly": True})
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or settings.job_image,
        "command": list(RUNNER_COMMAND),
        "env": env,
        "volumeMounts": mounts,
        **({"imagePullPolicy": settings.job_image_pull_policy} if settings.job_image_pull_policy else {}),
        "terminationMessagePath": DEFAULT_TERMINATION_LOG,
        # The runner writes its summary there; if it dies before that, the log tail explains why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    resources = spec.resources
    if resources is not None:
        rendered = {
            kind: dict(values)
            for kind, values in (("requests", resources.requests), ("limits", resources.limits))
            if values
        }
        if rendered:
            container["resources"] = rendered
    return container


def build_run_now_job(cronjob: Mapping[str, Any], token: str) -> dict[str, Any]:
    """A Job that runs ``cronjob``'s template now, serving the run-now ``token``.

    ``cronjob`` is the CronJob as the API server returned it (its ``uid`` is needed). The Job is
    owned by the CronJob, so the CronJob's history limits and garbage collection cover it too.
    """
    metadata = cronjob["metadata"]
    uid = metadata.get("uid")
    if not uid:
        raise ValueError(f"CronJob {metadata.get('name')!r} has no uid: pass the object the API server returned")
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"])
    job_metadata = template.get("metadata") or {}
    labels = {**(job_metadata.get("labels") or {}), LABEL_RUN_KIND: RUN_KIND_RUN_NOW}
    annotations = {
        **(job_metadata.get("annotations") or {}),
        ANNOTATION_RUN_NOW_TOKEN: token,
        ANNOTATION_INSTANTIATE: "manual",
    }
    job_spec = template["spec"]
    pod_metadata = job_spec["template"].setdefault("metadata", {})
    pod_metadata["labels"] = {**(pod_metadata.get("labels") or {}), LABEL_RUN_KIND: RUN_KIND_RUN_NOW}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "generateName": f"{metadata['name']}-now-",
            "namespace": metadata.get("namespace"),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": metadata["name"],
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": job_spec,
    }


def cronjob_drifted(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    """Whether the CronJob ``actual`` lost anything :func:`build_cronjob` rendered into ``desired``.

    Only rendered fields count: defaults the API server adds (``imagePullPolicy``, ``fieldRef``'s
    ``apiVersion``…), status and metadata others own are ignored. Lists must match element for
    element, so an added or removed env var is drift; resource quantities compare by value
    (``1000m`` equals ``1``); an optional field the spec no longer sets is drift while it lingers.
    """
    if not _covers(desired.get("metadata", {}).get("labels") or {}, actual.get("metadata", {}).get("labels") or {}):
        return True
    owners = [(ref.get("uid"), ref.get("controller")) for ref in desired.get("metadata", {}).get("ownerReferences", [])]
    actual_owners = [
        (ref.get("uid"), ref.get("controller")) for ref in actual.get("metadata", {}).get("ownerReferences") or []
    ]
    if any(owner not in actual_owners for owner in owners):
        return True
    if not _covers(desired.get("spec", {}), actual.get("spec", {})):
        return True
    for path in _OPTIONAL_PATHS:
        if _lookup(desired, path) in (None, {}, []) and _lookup(actual, path) not in (None, {}, []):
            return True
    return any((_lookup(desired, path) or {}) != (_lookup(actual, path) or {}) for path in _EXACT_PATHS)


def _covers(want: Any, have: Any, quantities: bool = False) -> bool:
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return False
        # The API server omits empty lists and maps (``omitempty``): an absent one is an empty one.
        return all(
            _covers(value, have[key], quantities or key in ("requests", "limits")) if key in have else value in ({}, [])
            for key, value in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(_covers(w, h, quantities) for w, h in zip(want, have, strict=True))
        )
    if quantities:
        return bool(_quantity(want) == _quantity(have))
    return type(want) is type(have) and bool(want == have)


def _lookup(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    current: Any = obj
    for part in path:
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)
_SUFFIXES = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def _quantity(value: Any) -> Any:
    """A Kubernetes quantity's value (``"1Gi"``, ``"500m"``, ``2``), or ``value`` itself if it is none."""
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        return value
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number + suffix)
        return Decimal(number) * _SUFFIXES[suffix]
    except InvalidOperation:
        return value
