"""The Helm chart on the real control plane: accepted manifests, a working install, least privilege,
and pods that meet the Pod Security "restricted" profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from sessionpipe_kubetest import images
from sessionpipe_kubetest.cluster import ControlPlane, free_port
from sessionpipe_kubetest.volumes import bind_directory
from sessionpipe_kubetest.waiting import wait_for
from tests.runner_support import CORPUS, REPO

pytestmark = pytest.mark.cluster

CHART = REPO / "charts" / "sessionpipe"
CRD = REPO / "crds" / "sessionprocessors.sessionpipe.io.yaml"

#: Value sets beside the defaults: every template path the chart has.
VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "limited-namespaces-with-network-policy": [
        "--set",
        "operator.watchNamespaces={NS,NS-other}",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.egressCIDRs={10.0.0.1/32}",
        "--set",
        "dashboard.ingress.enabled=true",
        "--set",
        "dashboard.ingress.host=usage.example",
        "--set",
        "dashboard.colocate=false",
    ],
    "verification-with-claims-created": [
        "--set",
        "processors.verification.enabled=true",
        "--set",
        "anthropic.existingSecret=anthropic",
        "--set",
        "storage.sessions.create=true",
        "--set",
        "storage.database.create=true",
        "--set",
        "storage.database.accessModes={ReadWriteOncePod}",
        # One pod at a time on such a claim: the chart refuses the dashboard beside the jobs.
        "--set",
        "dashboard.enabled=false",
    ],
    "own-service-accounts-and-json-logs": [
        "--set",
        "operator.serviceAccount.create=false",
        "--set",
        "operator.serviceAccount.name=existing-operator",
        "--set",
        "jobs.serviceAccount.name=runner",
        "--set",
        "operator.logFormat=json",
        "--set",
        "processors.usage.schedule=every 30m",
        "--set",
        "jobPolicy.allowedImages={ghcr.io/sessionpipe/,registry.example/team/job}",
        "--set",
        "jobPolicy.allowedServiceAccounts={runner,reporter}",
    ],
    "job-policy-off": ["--set", "jobPolicy.enabled=false"],
}


def _helm(control_plane: ControlPlane, *args: str, check: bool = True) -> Any:
    result = subprocess.run(
        [str(control_plane.bin_dir / "helm"), *args, "--kubeconfig", str(control_plane.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
    return result


def _install_crd(control_plane: ControlPlane) -> None:
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/sessionprocessors.sessionpipe.io", "--timeout=30s"
    )


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rendered_chart_is_accepted_by_the_api_server(
    control_plane: ControlPlane, namespace: str, value_set: str
) -> None:
    _install_crd(control_plane)
    other = f"{namespace}-other"
    control_plane.kubectl("create", "namespace", other)
    try:
        values = [arg.replace("NS", namespace) for arg in VALUE_SETS[value_set]]
        rendered = _helm(control_plane, "template", "rel", str(CHART), "-n", namespace, *values).stdout
        documents = [doc for doc in yaml.safe_load_all(rendered) if doc]
        assert {"Deployment", "ServiceAccount", "SessionProcessor"} <= {doc["kind"] for doc in documents}
        result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
        assert result.stdout.count("(server dry run)") == len(documents)
    finally:
        control_plane.kubectl("delete", "namespace", other, "--wait=false", check=False)


@pytest.fixture(scope="module")
def local_images() -> list[str]:
    """The chart's image values for the real images in the local store (built when missing)."""
    images.build_all()
    values: list[str] = []
    for kind in images.KINDS:
        repository, tag = images.image_tag(kind).rsplit(":", 1)
        values += ["--set", f"image.{kind}.repository={repository}", "--set", f"image.{kind}.tag={tag}"]
    return values


@pytest.mark.images
def test_helm_install_runs_the_operator_and_a_run_now_completes_then_uninstall_leaves_nothing(
    control_plane: ControlPlane, namespace: str, tmp_path: Path, local_images: list[str]
) -> None:
    """The operator and the run-now Job run in the real images (``make images``)."""
    database = tmp_path / "db"
    database.mkdir()
    database.chmod(0o777)  # the job image's user (10001) writes the database
    bind_directory(control_plane, namespace, "transcripts", CORPUS, read_only=True)
    bind_directory(control_plane, namespace, "results", database)
    # Pods share the host's network here: the dashboard listens on a port nobody else uses.
    dashboard_port = free_port()
    _helm(
        control_plane,
        "install",
        "sp",
        str(CHART),
        "-n",
        namespace,
        "--set",
        "storage.sessions.claimName=transcripts",
        "--set",
        "storage.database.claimName=results",
        "--set-json",
        'processors.usage.sessions={"claimName":"transcripts","subPath":"sniffly/projects"}',
        "--set",
        f"operator.watchNamespaces={{{namespace}}}",
        "--set",
        "processors.verification.enabled=true",
        "--set",
        "anthropic.existingSecret=anthropic",
        "--set",
        "processors.verification.suspend=true",
        "--set",
        f"dashboard.port={dashboard_port}",
        *local_images,
    )
    try:

        def cronjobs() -> set[str]:
            found = json.loads(control_plane.kubectl("get", "cronjobs", "-o", "json", namespace=namespace).stdout)
            return {item["metadata"]["name"] for item in found["items"]}

        assert wait_for(lambda: cronjobs() == {"usage", "verification"}, 90, "the processors' CronJobs", interval=0.5)
        control_plane.kubectl("annotate", "sproc", "usage", "sessionpipe.io/run-now=first", namespace=namespace)

        def finished_status() -> dict[str, Any] | None:
            found = json.loads(control_plane.kubectl("get", "sproc", "usage", "-o", "json", namespace=namespace).stdout)
            last = found.get("status", {}).get("lastRun") or {}
            return found["status"] if last.get("outcome") else None

        status = wait_for(finished_status, 120, "the run-now Job of usage to be reported", interval=0.5)
        assert status["lastRun"]["outcome"] == "succeeded", status
        assert status["lastRun"]["processed"] == 4
        con = duckdb.connect(str(database / "sessionpipe.duckdb"), read_only=True)
        try:
            used = con.execute("SELECT count(*) FROM usage_rows").fetchone()
        finally:
            con.close()
        assert used is not None and used[0] > 0
        _the_dashboard_shows_the_runs_totals(control_plane, namespace, database, dashboard_port)
        _the_notes_report_command_works_in_the_dashboards_container(control_plane, namespace, database)
        # The chart grants the operator everything it asks the API server for: not one refusal.
        operator_logs = [
            control_plane.executor.log_path(namespace, p.name).read_text(errors="replace")
            for p in control_plane.executor.processes()
            if p.namespace == namespace and p.name.startswith("sp-sessionpipe-operator")
        ]
        assert operator_logs, "no operator pod ran"
        # Both ran in their images: the job as the job image's user, the operator in its root.
        assert (database / "sessionpipe.duckdb").stat().st_uid == 10001
        operators = [p for p in control_plane.executor.processes() if p.name.startswith("sp-sessionpipe-operator")]
        preludes = [control_plane.executor.pod_directory(namespace, p.name) / p.uid / "prelude.sh" for p in operators]
        assert all(images.ASSEMBLY in prelude.read_text() for prelude in preludes), "the operator ran outside its image"
        refusals = [line for log in operator_logs for line in log.splitlines() if "Forbidden" in line or " 403" in line]
        assert not refusals, "\n".join(refusals[:5])
    finally:
        started = time.monotonic()
        _helm(control_plane, "uninstall", "sp", "-n", namespace, "--wait", "--timeout", "120s")
        uninstall_seconds = time.monotonic() - started
    assert uninstall_seconds < 120

    def leftovers() -> list[str]:
        kinds = "sessionprocessors,cronjobs,jobs,deployments,serviceaccounts,roles,rolebindings"
        found = json.loads(control_plane.kubectl("get", kinds, "-o", "json", namespace=namespace).stdout)
        return [
            f"{item['kind']}/{item['metadata']['name']}"
            for item in found["items"]
            if item["metadata"]["name"] != "default" and not item.get("metadata", {}).get("deletionTimestamp")
        ]

    wait_for(lambda: not leftovers(), 60, "every resource of the release to go", interval=0.5)
    cluster_scoped = control_plane.kubectl(
        "get",
        "clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings",
        "-o",
        "name",
    ).stdout
    assert "sp-sessionpipe" not in cluster_scoped

    # The API objects are gone as soon as the API server says so; the operator's process ends a
    # moment later, once the executor (the kubelet's part) has delivered SIGTERM and it has exited.
    def running() -> list[str]:
        return [p.name for p in control_plane.executor.processes() if p.namespace == namespace and p.running]

    wait_for(lambda: not running(), 30, "the release's pod processes to exit after SIGTERM", interval=0.2)


def _the_dashboard_shows_the_runs_totals(
    control_plane: ControlPlane, namespace: str, database: Path, port: int
) -> None:
    """The dashboard pod (the job image, the claim read-only) answers at its pod address with the run's totals."""
    found = json.loads(
        control_plane.kubectl(
            "get", "pods", "-l", "app.kubernetes.io/component=dashboard", "-o", "json", namespace=namespace
        ).stdout
    )["items"]
    assert len(found) == 1, [pod["metadata"]["name"] for pod in found]
    pod = found[0]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "database")
    assert volume["persistentVolumeClaim"] == {"claimName": "results", "readOnly": True}
    name = pod["metadata"]["name"]
    address = wait_for(lambda: _pod_ip(control_plane, namespace, name), 120, "the dashboard pod's IP")
    url = f"http://{address}:{port}"

    def served_usage() -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{url}/api/usage?by=day", timeout=10) as response:
                return dict(json.loads(response.read()))
        except (OSError, ValueError):
            return None

    log = control_plane.executor.log_path(namespace, name)
    try:
        served = wait_for(served_usage, 120, f"the dashboard's /api/usage at {url}", interval=1)
    except AssertionError as error:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no output)"
        raise AssertionError(f"{error}\ndashboard output:\n{tail}") from error
    report = subprocess.run(
        [str(Path(sys.executable).with_name("sessionpipe")), "report", "usage", "--by", "day", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "SESSIONPIPE_DB": str(database / "sessionpipe.duckdb")},
    )
    expected = json.loads(report.stdout)["totals"]
    assert expected["totalTokens"] > 0
    # Token counts exactly; the cost is a sum of floats DuckDB may add in another order.
    assert {**served["totals"], "totalCost": None} == {**expected, "totalCost": None}
    assert served["totals"]["totalCost"] == pytest.approx(expected["totalCost"], rel=1e-12)
    # It serves from the job image, as the image's user, with the claim read-only.
    processes = [p for p in control_plane.executor.processes() if p.name == name]
    prelude = control_plane.executor.pod_directory(namespace, processes[0].name) / processes[0].uid / "prelude.sh"
    assert images.ASSEMBLY in prelude.read_text(), "the dashboard ran outside the job image"


def _the_notes_report_command_works_in_the_dashboards_container(
    control_plane: ControlPlane, namespace: str, database: Path
) -> None:
    """The release notes' ``kubectl exec … -- sessionpipe report …``, run as that container would run it.

    The test executor has no ``kubectl exec``: the command after ``--`` runs in the job image, as its
    user, on a read-only root with the database folder bound read-only where the dashboard mounts it.
    """
    notes = _helm(control_plane, "get", "notes", "sp", "-n", namespace).stdout
    line = next(line for line in notes.splitlines() if "kubectl exec" in line and "sessionpipe report" in line)
    command = line.split(" -- ", 1)[1].split()
    assert command[:3] == ["sessionpipe", "report", "usage"], line
    run = images.ImageRun(
        image=images.image_tag("job"), command=command, binds=[images.Bind(database, "/data/db", read_only=True)]
    )
    result = images.run_in_image(run, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Total" in result.stdout and "$" in result.stdout, result.stdout


def _pod_ip(control_plane: ControlPlane, namespace: str, name: str) -> str | None:
    pod = json.loads(control_plane.kubectl("get", "pod", name, "-o", "json", namespace=namespace).stdout)
    return (pod.get("status") or {}).get("podIP") if (pod.get("status") or {}).get("phase") == "Running" else None


def _can_i(control_plane: ControlPlane, account: str, verb: str, resource: str, namespace: str) -> bool:
    result = control_plane.kubectl("auth", "can-i", verb, resource, "--as", account, namespace=namespace, check=False)
    return result.stdout.strip() == "yes"


def test_rbac_is_least_privilege(control_plane: ControlPlane, namespace: str) -> None:
    _install_crd(control_plane)
    other = f"{namespace}-x"
    control_plane.kubectl("create", "namespace", other)
    try:
        rendered = _helm(
            control_plane,
            "template",
            "rb",
            str(CHART),
            "-n",
            namespace,
            "--set",
            f"operator.watchNamespaces={{{namespace}}}",
        ).stdout
        control_plane.kubectl("apply", "-f", "-", namespace=namespace, input=rendered)
        cluster_wide = _helm(control_plane, "template", "cw", str(CHART), "-n", other).stdout
        control_plane.kubectl("apply", "-f", "-", namespace=other, input=cluster_wide)

        limited = f"system:serviceaccount:{namespace}:rb-sessionpipe-operator"
        wide = f"system:serviceaccount:{other}:cw-sessionpipe-operator"
        job = f"system:serviceaccount:{namespace}:rb-sessionpipe-job"
        allowed = [
            (limited, "patch", "sessionprocessors.sessionpipe.io/status", namespace),
            (limited, "watch", "sessionprocessors.sessionpipe.io", namespace),
            (limited, "create", "cronjobs.batch", namespace),
            (limited, "delete", "cronjobs.batch", namespace),
            (limited, "create", "jobs.batch", namespace),
            (limited, "list", "pods", namespace),
            (limited, "create", "events", namespace),
            (limited, "list", "customresourcedefinitions.apiextensions.k8s.io", ""),
            # The PROGRESS column: a running Job's database Lease, read by name.
            (limited, "get", "leases.coordination.k8s.io", namespace),
            (wide, "get", "leases.coordination.k8s.io", namespace),
            (wide, "create", "cronjobs.batch", namespace),
            (wide, "list", "sessionprocessors.sessionpipe.io", "kube-system"),
            (job, "get", "leases.coordination.k8s.io", namespace),
            (job, "create", "leases.coordination.k8s.io", namespace),
            (job, "update", "leases.coordination.k8s.io", namespace),
        ]
        denied = [
            (limited, "get", "secrets", namespace),
            (limited, "list", "secrets", namespace),
            (limited, "create", "cronjobs.batch", other),
            (limited, "list", "sessionprocessors.sessionpipe.io", other),
            (limited, "delete", "pods", namespace),
            (limited, "create", "pods", namespace),
            (limited, "list", "namespaces", ""),
            (limited, "delete", "customresourcedefinitions.apiextensions.k8s.io", ""),
            # Reading a Lease by name is all the progress needs: no listing, watching or writing the
            # database Leases (the leader Role allows update on the operator's own Lease only).
            (limited, "list", "leases.coordination.k8s.io", namespace),
            (limited, "watch", "leases.coordination.k8s.io", namespace),
            (limited, "update", "leases.coordination.k8s.io", namespace),
            (limited, "get", "leases.coordination.k8s.io", other),
            (wide, "update", "leases.coordination.k8s.io", namespace),
            (wide, "get", "secrets", namespace),
            (wide, "list", "secrets", "kube-system"),
            (wide, "update", "clusterroles.rbac.authorization.k8s.io", ""),
            (job, "delete", "leases.coordination.k8s.io", namespace),
            (job, "list", "leases.coordination.k8s.io", namespace),
            (job, "get", "leases.coordination.k8s.io", other),
            (job, "get", "secrets", namespace),
            (job, "get", "pods", namespace),
            (job, "get", "configmaps", namespace),
            (job, "list", "sessionprocessors.sessionpipe.io", namespace),
            (job, "create", "jobs.batch", namespace),
        ]
        wrong = [row for row in allowed if not _can_i(control_plane, *row)]
        wrong += [row for row in denied if _can_i(control_plane, *row)]
        assert not wrong, f"RBAC differs from least privilege for: {wrong}"
    finally:
        for name in ("cw-sessionpipe-operator", "cw-sessionpipe-operator-crds", "rb-sessionpipe-operator-crds"):
            control_plane.kubectl("delete", "clusterrole,clusterrolebinding", name, check=False)
        for name in ("cw-sessionpipe-job-policy", "rb-sessionpipe-job-policy"):
            control_plane.kubectl(
                "delete", "validatingadmissionpolicy,validatingadmissionpolicybinding", name, check=False
            )
        control_plane.kubectl("delete", "namespace", other, "--wait=false", check=False)


def _pod_from(template: dict[str, Any], name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": template["spec"]}


def test_every_rendered_pod_meets_the_restricted_pod_security_profile(
    control_plane: ControlPlane, namespace: str
) -> None:
    from sessionpipe_operator.models import SessionProcessorSpec
    from sessionpipe_operator.render import build_cronjob
    from sessionpipe_operator.settings import OperatorSettings

    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    rendered = _helm(control_plane, "template", "ps", str(CHART), "-n", namespace).stdout
    deployments = [doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "Deployment"]
    settings = OperatorSettings.from_env({"SESSIONPIPE_OPERATOR_JOB_IMAGE": "example.org/job:1"})
    specs = {
        "usage": {
            "processor": "usage",
            "schedule": "@hourly",
            "sessions": {"claimName": "s"},
            "database": {"claimName": "d"},
        },
        "verification": {
            "processor": "verification",
            "schedule": "every 2h",
            "sessions": {"claimName": "s", "subPath": "team"},
            "database": {"claimName": "d"},
            "llm": {"model": "claude-sonnet-4-6", "apiKeySecretRef": {"name": "anthropic", "key": "key"}},
        },
    }
    # The operator and the dashboard.
    pods = [_pod_from(deployment["spec"]["template"], deployment["metadata"]["name"]) for deployment in deployments]
    assert len(pods) == 2
    for name, spec in specs.items():
        owner = {"apiVersion": "sessionpipe.io/v1alpha1", "kind": "SessionProcessor", "name": name, "uid": "0"}
        cronjob = build_cronjob(name, namespace, owner, SessionProcessorSpec.model_validate(spec), settings)
        pods.append(_pod_from(cronjob["spec"]["jobTemplate"]["spec"]["template"], f"job-{name}"))
    for pod in pods:
        result = control_plane.kubectl(
            "create", "--dry-run=server", "-f", "-", namespace=namespace, input=json.dumps(pod), check=False
        )
        assert result.returncode == 0, f"{pod['metadata']['name']} refused:\n{result.stderr}"
        assert "Warning" not in result.stderr, result.stderr
    # The namespace really enforces the profile: a pod that asks for privilege is refused.
    privileged = _pod_from(pods[0], "privileged")
    privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    refused = control_plane.kubectl(
        "create", "--dry-run=server", "-f", "-", namespace=namespace, input=json.dumps(privileged), check=False
    )
    assert refused.returncode != 0 and "restricted" in refused.stderr
