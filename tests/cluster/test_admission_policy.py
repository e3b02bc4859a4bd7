"""Who may run what, on the real API server: the chart's ValidatingAdmissionPolicy and the operator.

Creating a SessionProcessor makes the operator run pods with its own rights. These tests hold the two
limits on what such a pod may be: the policy the chart ships (rendered by helm, applied as rendered)
refuses a foreign image or service account at ``kubectl apply`` by a user who may only manage
SessionProcessors; the operator refuses the same specs with InvalidSpec where the policy is absent.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from sessionpipe_kubetest.cluster import ControlPlane
from sessionpipe_kubetest.waiting import wait_for
from sessionpipe_operator import policy
from sessionpipe_operator.k8s import KubeClient, cronjob_path, sessionprocessor_path
from sessionpipe_operator.settings import OperatorSettings
from tests.cluster.operator_support import (
    JOB_SERVICE_ACCOUNT,
    OperatorProcess,
    install_crd,
    prepare_namespace,
    sessionprocessor,
)
from tests.runner_support import REPO
from tests.unit.operator.test_policy import IMAGE_CASES

pytestmark = pytest.mark.cluster

CHART = REPO / "charts" / "sessionpipe"
JOB_REPOSITORY = "ghcr.io/sessionpipe/sessionpipe-job"  # the chart's default image.job.repository
FOREIGN_IMAGE = "ghcr.io/evil/miner:1"
AUTHOR = "author"


def _spec(**extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "processor": "usage",
        "schedule": "0 0 1 1 *",
        "sessions": {"claimName": "transcripts"},
        "database": {"claimName": "warehouse"},
    }
    spec.update(extra)
    return spec


def _release(namespace: str) -> str:
    """A release name of this test alone: the policy and its binding are cluster-scoped."""
    return f"ap{namespace[-6:]}"


def _render(control_plane: ControlPlane, release: str, namespace: str, *values: str) -> list[dict[str, Any]]:
    """The chart's policy, binding and operator Deployment as ``helm template`` renders them."""
    shown = ["--show-only", "templates/admission-policy.yaml", "--show-only", "templates/deployment.yaml"]
    result = subprocess.run(
        [str(control_plane.bin_dir / "helm"), "template", release, str(CHART), "-n", namespace, *values, *shown],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _operator_settings(documents: list[dict[str, Any]]) -> OperatorSettings:
    """The settings the chart gives the operator, read from the rendered Deployment's environment."""
    deployment = next(
        doc
        for doc in documents
        if doc["kind"] == "Deployment" and doc["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return OperatorSettings.from_env({item["name"]: item["value"] for item in container["env"] if "value" in item})


@contextmanager
def _policy_installed(control_plane: ControlPlane, namespace: str, *values: str) -> Iterator[list[dict[str, Any]]]:
    """Apply the rendered policy and binding (bound to ``namespace``), wait until they refuse, remove them."""
    release = _release(namespace)
    documents = _render(
        control_plane, release, namespace, "--set", f"operator.watchNamespaces={{{namespace}}}", *values
    )
    admission = [doc for doc in documents if doc["kind"].startswith("ValidatingAdmissionPolicy")]
    assert [doc["kind"] for doc in admission] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    name = admission[0]["metadata"]["name"]
    control_plane.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": admission})
    )
    try:
        probe = sessionprocessor("probe", _spec(image=FOREIGN_IMAGE))

        def refusing() -> bool:
            return "denied request" in _dry_run(control_plane, namespace, probe).stderr

        wait_for(refusing, 30, "the policy to refuse a foreign image")
        yield documents
    finally:
        control_plane.kubectl(
            "delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name, "--ignore-not-found"
        )


def _dry_run(control_plane: ControlPlane, namespace: str, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return control_plane.kubectl(
        "create", "--dry-run=server", "-f", "-", namespace=namespace, input=json.dumps(manifest), check=False
    )


def _admitted(control_plane: ControlPlane, namespace: str, manifest: dict[str, Any]) -> bool:
    """Whether the API server admits ``manifest``; a refusal must be the policy's own verdict, not an
    expression that failed to evaluate (which ``failurePolicy: Fail`` would also turn into a refusal)."""
    result = _dry_run(control_plane, namespace, manifest)
    assert result.returncode == 0 or "denied request" in result.stderr, result.stderr
    return result.returncode == 0


def _author_kubectl(
    control_plane: ControlPlane, kubeconfig: Path, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """kubectl with the author's own token (no impersonation): what the author's laptop would run."""
    return subprocess.run(
        [str(control_plane.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _make_author(control_plane: ControlPlane, namespace: str) -> Path:
    """A service account that may manage SessionProcessors in ``namespace`` and nothing else."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "sessionprocessor-author"},
        "rules": [
            {
                "apiGroups": ["sessionpipe.io"],
                "resources": ["sessionprocessors"],
                "verbs": ["get", "list", "create", "update", "patch"],
            }
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "sessionprocessor-author"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sessionprocessor-author"},
        "subjects": [{"kind": "ServiceAccount", "name": AUTHOR, "namespace": namespace}],
    }
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": AUTHOR}}
    items = {"apiVersion": "v1", "kind": "List", "items": [account, role, binding]}
    control_plane.kubectl("apply", "-f", "-", namespace=namespace, input=json.dumps(items))
    return control_plane.service_account_kubeconfig(namespace, AUTHOR)


def test_a_user_who_may_only_manage_sessionprocessors_is_refused_a_foreign_image_or_service_account(
    control_plane: ControlPlane, namespace: str
) -> None:
    install_crd(control_plane)
    kubeconfig = _make_author(control_plane, namespace)
    # Made before the policy existed: its unchanged image must not block later updates.
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        namespace=namespace,
        input=json.dumps(sessionprocessor("legacy", _spec(image=FOREIGN_IMAGE))),
    )
    job_account = f"{_release(namespace)}-sessionpipe-job"

    def author_apply(name: str, spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        manifest = json.dumps(sessionprocessor(name, spec))
        return _author_kubectl(control_plane, kubeconfig, "apply", "-f", "-", input=manifest)

    with _policy_installed(control_plane, namespace):
        for verb, resource in [("create", "pods"), ("create", "jobs.batch"), ("create", "cronjobs.batch")]:
            answer = _author_kubectl(control_plane, kubeconfig, "auth", "can-i", verb, resource).stdout.strip()
            assert answer == "no", f"the author may {verb} {resource}: the test would prove nothing"

        refused = {
            "foreign-image": (_spec(image=FOREIGN_IMAGE), f"spec.image {FOREIGN_IMAGE} is not allowed"),
            "lookalike-image": (_spec(image=f"{JOB_REPOSITORY}-evil:1"), f"spec.image {JOB_REPOSITORY}-evil:1"),
            "foreign-account": (_spec(serviceAccountName="admin"), "spec.serviceAccountName admin is not allowed"),
        }
        messages = {}
        for name, (spec, message) in refused.items():
            result = author_apply(name, spec)
            print(f"\n{name}: {result.stderr.strip()}")
            assert result.returncode != 0, f"{name}: kubectl apply accepted it"
            assert message in result.stderr and "denied request" in result.stderr, result.stderr
            messages[name] = result.stderr
        # Each refusal names what is allowed and the chart value that says so.
        assert f"use an image under {JOB_REPOSITORY} " in messages["foreign-image"]
        assert "jobPolicy.allowedImages" in messages["foreign-image"]
        assert f"use {job_account} " in messages["foreign-account"]
        assert "jobPolicy.allowedServiceAccounts" in messages["foreign-account"]

        allowed = {
            "allowed": _spec(image=f"{JOB_REPOSITORY}:0.1.0", serviceAccountName=job_account),
            "pinned": _spec(image=f"{JOB_REPOSITORY}@sha256:{'c' * 64}"),
            "defaults": _spec(),
        }
        for name, spec in allowed.items():
            result = author_apply(name, spec)
            assert result.returncode == 0, f"{name}: {result.stderr}"
        listed = _author_kubectl(control_plane, kubeconfig, "get", "sessionprocessors", "-o", "name").stdout.split()
        assert sorted(listed) == sorted(f"sessionprocessor.sessionpipe.io/{name}" for name in [*allowed, "legacy"])

        # An accepted processor cannot be switched to a foreign image afterwards.
        switched = author_apply("allowed", _spec(image=FOREIGN_IMAGE, serviceAccountName=job_account))
        assert switched.returncode != 0 and "spec.image" in switched.stderr, switched.stderr
        # The processor made before the policy keeps its image through other updates (run-now, the
        # operator's bookkeeping) but cannot move to another foreign one.
        annotated = _author_kubectl(
            control_plane, kubeconfig, "annotate", "sproc", "legacy", "sessionpipe.io/run-now=1"
        )
        assert annotated.returncode == 0, annotated.stderr
        moved = author_apply("legacy", _spec(image="ghcr.io/evil/miner:2"))
        assert moved.returncode != 0 and "spec.image ghcr.io/evil/miner:2" in moved.stderr, moved.stderr

        # The binding covers the release's watched namespaces only.
        other = f"{namespace}-elsewhere"
        control_plane.kubectl("create", "namespace", other)
        try:
            assert _dry_run(control_plane, other, sessionprocessor("free", _spec(image=FOREIGN_IMAGE))).returncode == 0
        finally:
            control_plane.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_the_policy_and_the_operator_judge_every_image_and_account_alike(
    control_plane: ControlPlane, namespace: str
) -> None:
    install_crd(control_plane)
    images = ["ghcr.io/sessionpipe/sessionpipe-job", "registry.example:5000/", "registry.example/team/job:2"]
    accounts = ["runner", "reporter"]
    values = ["--set", f"jobPolicy.allowedImages={{{','.join(images)}}}"]
    values += ["--set", f"jobPolicy.allowedServiceAccounts={{{','.join(accounts)}}}"]
    with _policy_installed(control_plane, namespace, *values) as documents:
        settings = _operator_settings(documents)
        assert (policy.allowed_images(settings), policy.allowed_service_accounts(settings)) == (
            tuple(images),
            tuple(accounts),
        )
        probes = sorted({image for _, image, _ in IMAGE_CASES} | {"registry.example:5000/team/job:2"})
        disagreements = []
        for number, image in enumerate(probes):
            admitted = _admitted(control_plane, namespace, sessionprocessor(f"i{number}", _spec(image=image)))
            if admitted != policy.image_allowed(image, policy.allowed_images(settings)):
                disagreements.append((image, admitted))
        for account in ["runner", "reporter", "runner-admin", "default", "reporte"]:
            admitted = _admitted(control_plane, namespace, sessionprocessor(account, _spec(serviceAccountName=account)))
            if admitted != policy.service_account_allowed(account, policy.allowed_service_accounts(settings)):
                disagreements.append((account, admitted))
        assert not disagreements, disagreements
        # The table is not trivially one-sided.
        verdicts = {policy.image_allowed(image, images) for image in probes}
        assert verdicts == {True, False}


def test_without_the_policy_the_operator_refuses_a_foreign_image_or_account_with_invalid_spec(
    control_plane: ControlPlane, namespace: str, k8s_api: Any, tmp_path: Path
) -> None:
    install_crd(control_plane)
    prepare_namespace(control_plane, namespace)
    kube = KubeClient(k8s_api)
    operator = OperatorProcess(control_plane, tmp_path / "operator", {"SESSIONPIPE_OPERATOR_NAMESPACES": namespace})
    operator.start()
    try:

        def apply(name: str, spec: dict[str, Any]) -> None:
            control_plane.kubectl(
                "apply", "-f", "-", namespace=namespace, input=json.dumps(sessionprocessor(name, spec))
            )

        def invalid_message(name: str) -> str | None:
            body = kube.get(sessionprocessor_path(namespace, name)) or {}
            for condition in (body.get("status") or {}).get("conditions") or []:
                if condition["type"] == "InvalidSpec" and condition["status"] == "True":
                    return str(condition["message"])
            return None

        apply("allowed", _spec(image="sessionpipe-job:2", serviceAccountName=JOB_SERVICE_ACCOUNT))
        refused = {
            "foreign-image": (
                _spec(image=FOREIGN_IMAGE, database={"claimName": "w", "path": "a.duckdb"}),
                "spec.image",
            ),
            "lookalike-image": (
                _spec(image="sessionpipe-job-evil:1", database={"claimName": "w", "path": "b.duckdb"}),
                "spec.image",
            ),
            "foreign-account": (
                _spec(serviceAccountName="admin", database={"claimName": "w", "path": "c.duckdb"}),
                "spec.serviceAccountName 'admin' is not allowed: use sessionpipe-job",
            ),
        }
        for name, (spec, _) in refused.items():
            apply(name, spec)
        wait_for(lambda: kube.get(cronjob_path(namespace, "allowed")), 15, "the allowed processor's CronJob")
        for name, (_, message) in refused.items():
            found = wait_for(functools.partial(invalid_message, name), 15, f"InvalidSpec on {name}", interval=0.3)
            print(f"\n{name}: InvalidSpec: {found}")
            assert found.startswith(message), found
            assert kube.get(cronjob_path(namespace, name)) is None, f"{name} must not get a CronJob"

        # An accepted processor switched to a foreign image stops: its CronJob is suspended and keeps
        # the image it had; the foreign image reaches no CronJob.
        apply("allowed", _spec(image=FOREIGN_IMAGE, serviceAccountName=JOB_SERVICE_ACCOUNT))
        wait_for(lambda: invalid_message("allowed"), 15, "InvalidSpec on the switched processor", interval=0.3)

        def suspended() -> dict[str, Any] | None:
            cronjob = kube.get(cronjob_path(namespace, "allowed"))
            return cronjob if cronjob and cronjob["spec"].get("suspend") else None

        cronjob = wait_for(suspended, 15, "the switched processor's CronJob to be suspended", interval=0.3)
        assert (
            cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] == "sessionpipe-job:2"
        )
    finally:
        operator.stop()
        print(f"\n[operator] log: {operator.log_path}")
