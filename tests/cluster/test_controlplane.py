"""The test control plane behaves like a real cluster where the product relies on it.

Real etcd, kube-apiserver and kube-controller-manager (sessionpipe_kubetest.cluster) and the local pod
executor standing in for the kubelet (sessionpipe_kubetest.executor). Each test checks a behaviour that the
operator, the lease and the Helm tests take for granted: CronJob scheduling with Forbid, garbage
collection and namespace deletion, RBAC, and pods that see their env, volumes and termination message.
"""

from __future__ import annotations

import datetime
import errno
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from sessionpipe_kubetest.cluster import ControlPlane
from sessionpipe_kubetest.volumes import bind_directory, persistent_volume_claim
from sessionpipe_kubetest.waiting import wait_for
from tests.kube_plugin import SaApiFactory
from tests.support.kubectl import apply

JSON = dict[str, Any]


def get(control_plane: ControlPlane, namespace: str | None, *what: str) -> JSON:
    result: JSON = json.loads(control_plane.kubectl("get", *what, "-o", "json", namespace=namespace).stdout)
    return result


def exists(control_plane: ControlPlane, namespace: str | None, *what: str) -> bool:
    result = control_plane.kubectl("get", *what, "-o", "name", namespace=namespace, check=False)
    if result.returncode == 0:
        return True
    assert "NotFound" in result.stderr, result.stderr
    return False


def job_manifest(name: str, pod_spec: JSON, **job_spec: Any) -> JSON:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, **job_spec, "template": {"spec": {"restartPolicy": "Never", **pod_spec}}},
    }


def container(command: list[str], **fields: Any) -> JSON:
    return {"name": "main", "image": "example.invalid/not-pulled:1", "command": command, **fields}


def job_pods(control_plane: ControlPlane, namespace: str, job: str) -> list[JSON]:
    pods: list[JSON] = get(control_plane, namespace, "pods", "-l", f"job-name={job}")["items"]
    return pods


def terminated_pod(control_plane: ControlPlane, namespace: str, job: str, timeout: float = 60) -> JSON:
    """The pod of ``job`` once the executor has reported it Succeeded or Failed."""
    found: list[JSON] = []

    def done() -> bool:
        found[:] = [
            p for p in job_pods(control_plane, namespace, job) if p["status"].get("phase") in ("Succeeded", "Failed")
        ]
        return bool(found)

    wait_for(done, timeout, f"a terminated pod of job {job}", interval=0.3)
    return found[0]


def job_condition(control_plane: ControlPlane, namespace: str, job: str, kind: str) -> Callable[[], bool]:
    def check() -> bool:
        conditions = get(control_plane, namespace, "job", job)["status"].get("conditions") or []
        return any(c["type"] == kind and c["status"] == "True" for c in conditions)

    return check


@pytest.mark.cluster
def test_cronjob_forbid_keeps_the_next_schedule_from_overlapping(control_plane: ControlPlane, namespace: str) -> None:
    """The real CronJob controller creates a Job, the executor runs it to completion, and while it runs
    the next scheduled time passes without a second Job (``concurrencyPolicy: Forbid``); that run
    starts only after the first Job has completed.

    To not wait up to a minute for the first tick, the test marks the CronJob's last schedule as two
    minutes ago: the controller then starts the missed run of the current minute at once, exactly as
    after a controller outage. The Job sleeps until a few seconds past the next whole minute, so the
    controller meets that tick with the Job still active.
    """
    now = datetime.datetime.now(datetime.UTC)
    if now.second >= 48:  # too close to the boundary to start the first run safely before it
        time.sleep(61 - now.second)
        now = datetime.datetime.now(datetime.UTC)
    this_minute = now.replace(second=0, microsecond=0)
    next_minute = this_minute + datetime.timedelta(minutes=1)
    sleep_seconds = int((next_minute - now).total_seconds()) + 8
    apply(
        control_plane,
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "ticker"},
            "spec": {
                "schedule": "* * * * *",
                "concurrencyPolicy": "Forbid",
                "startingDeadlineSeconds": 300,
                "jobTemplate": {
                    "spec": job_manifest("run", {"containers": [container(["sleep", str(sleep_seconds)])]})["spec"]
                },
            },
        },
    )
    two_minutes_ago = (this_minute - datetime.timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    control_plane.kubectl(
        "patch",
        "cronjob",
        "ticker",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"lastScheduleTime": two_minutes_ago}}),
        namespace=namespace,
    )

    def jobs() -> list[JSON]:
        items: list[JSON] = get(control_plane, namespace, "jobs")["items"]
        return items

    wait_for(lambda: len(jobs()) == 1, 30, "the CronJob controller to create the missed run")
    first = jobs()[0]
    assert first["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
    assert first["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"].startswith(
        this_minute.strftime("%Y-%m-%dT%H:%M")
    )
    job_name = first["metadata"]["name"]
    wait_for(
        lambda: any(p["status"].get("phase") == "Running" for p in job_pods(control_plane, namespace, job_name)),
        30,
        "the executor to run the Job's pod",
    )

    # The next tick passes while the Job still runs: the controller declines to start another one.
    def declined() -> bool:
        events = get(control_plane, namespace, "events", "--field-selector", "reason=JobAlreadyActive")["items"]
        return any(e["involvedObject"]["name"] == "ticker" for e in events)

    wait_for(declined, sleep_seconds + 5, "the CronJob controller to decline the overlapping run")
    assert datetime.datetime.now(datetime.UTC) >= next_minute
    assert [job["metadata"]["name"] for job in jobs()] == [job_name]
    assert get(control_plane, namespace, "job", job_name)["status"].get("active") == 1

    wait_for(job_condition(control_plane, namespace, job_name, "Complete"), sleep_seconds + 30, "the Job to complete")
    (pod,) = job_pods(control_plane, namespace, job_name)
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    run = control_plane.executor.process(namespace, pod["metadata"]["name"])
    assert run is not None and run.command == ["sleep", str(sleep_seconds)]

    # Forbid defers the declined tick rather than dropping it: within startingDeadlineSeconds the
    # controller starts it once the first Job has finished, never while it runs.
    wait_for(lambda: len(jobs()) == 2, 60, "the deferred run to start after the first Job")
    completed = get(control_plane, namespace, "job", job_name)["status"]["completionTime"]
    (deferred,) = [job for job in jobs() if job["metadata"]["name"] != job_name]
    assert deferred["metadata"]["creationTimestamp"] >= completed
    assert deferred["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"].startswith(
        next_minute.strftime("%Y-%m-%dT%H:%M")
    )


@pytest.mark.cluster
def test_garbage_collection_and_namespace_deletion(control_plane: ControlPlane, namespace: str) -> None:
    """Deleting an owner deletes its dependents; deleting a namespace with a running pod completes."""
    control_plane.kubectl("create", "configmap", "owner", "--from-literal=role=owner", namespace=namespace)
    owner_uid = get(control_plane, namespace, "configmap", "owner")["metadata"]["uid"]
    apply(
        control_plane,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "dependent",
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}],
            },
            "data": {"role": "dependent"},
        },
    )
    control_plane.kubectl("create", "configmap", "bystander", namespace=namespace)
    control_plane.kubectl("delete", "configmap", "owner", "--wait=false", namespace=namespace)
    wait_for(
        lambda: not exists(control_plane, namespace, "configmap", "dependent"), 30, "the dependent to be collected"
    )
    assert exists(control_plane, namespace, "configmap", "bystander")

    doomed = f"{namespace}-doomed"
    control_plane.kubectl("create", "namespace", doomed)
    control_plane.kubectl("create", "configmap", "settings", "--from-literal=a=b", namespace=doomed)
    apply(control_plane, doomed, job_manifest("long", {"containers": [container(["sleep", "300"])]}))
    wait_for(
        lambda: any(p["status"].get("phase") == "Running" for p in job_pods(control_plane, doomed, "long")),
        30,
        "the long pod to run",
    )
    (pod,) = job_pods(control_plane, doomed, "long")
    run = control_plane.executor.process(doomed, pod["metadata"]["name"])
    assert run is not None and run.running

    control_plane.kubectl("delete", "namespace", doomed, "--wait=false")
    wait_for(lambda: not exists(control_plane, None, "namespace", doomed), 60, "the namespace to be deleted")
    run = control_plane.executor.process(doomed, pod["metadata"]["name"])
    assert run is not None and not run.running
    assert run.exit_code == 143, "the pod's process should have ended on SIGTERM"


@pytest.mark.cluster
def test_rbac_is_enforced_for_service_accounts(
    control_plane: ControlPlane, namespace: str, sa_api: SaApiFactory
) -> None:
    """A service account gets 403 until a Role and RoleBinding grant it the verbs, and only those."""
    control_plane.kubectl("create", "serviceaccount", "worker", namespace=namespace)
    core = client.CoreV1Api(sa_api(namespace, "worker"))
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="made-by-worker"), data={"k": "v"})
    with pytest.raises(client.ApiException) as listing:
        core.list_namespaced_config_map(namespace)
    assert listing.value.status == 403
    with pytest.raises(client.ApiException) as creating:
        core.create_namespaced_config_map(namespace, body)
    assert creating.value.status == 403

    control_plane.kubectl(
        "create", "role", "configmaps", "--verb=get,list,create", "--resource=configmaps", namespace=namespace
    )
    control_plane.kubectl(
        "create",
        "rolebinding",
        "worker-configmaps",
        "--role=configmaps",
        f"--serviceaccount={namespace}:worker",
        namespace=namespace,
    )

    def allowed() -> bool:
        try:
            core.list_namespaced_config_map(namespace)
        except client.ApiException as error:
            assert error.status == 403
            return False
        return True

    wait_for(allowed, 60, "the RoleBinding to take effect")
    core.create_namespaced_config_map(namespace, body)
    assert exists(control_plane, namespace, "configmap", "made-by-worker")
    with pytest.raises(client.ApiException) as secrets:
        core.list_namespaced_secret(namespace)
    assert secrets.value.status == 403


@pytest.mark.cluster
def test_pods_finish_and_start_across_an_api_server_restart(control_plane: ControlPlane, namespace: str) -> None:
    """A pod that ends while the API server is down is still reported once it is back, and the
    executor's watch reconnects so that a pod created afterwards runs too."""
    apply(control_plane, namespace, job_manifest("through", {"containers": [container(["sleep", "2"])]}))
    wait_for(
        lambda: any(p["status"].get("phase") == "Running" for p in job_pods(control_plane, namespace, "through")),
        30,
        "the pod to run",
    )
    control_plane.stop_apiserver()
    try:
        assert control_plane.kubectl("get", "ns", check=False).returncode != 0
        time.sleep(3)  # the pod's process exits meanwhile
    finally:
        control_plane.start_apiserver()
    wait_for(
        job_condition(control_plane, namespace, "through", "Complete"), 60, "the Job to complete after the restart"
    )
    apply(control_plane, namespace, job_manifest("after", {"containers": [container(["true"])]}))
    wait_for(job_condition(control_plane, namespace, "after", "Complete"), 60, "a Job created after the restart")


PROBE = r"""
import errno, json, os, sys
from kubernetes import client, config

report = {"read": open("/data/in/hello.txt").read()}
try:
    open("/data/in/new.txt", "w").write("x")
    report["write_errno"] = 0
except OSError as error:
    report["write_errno"] = error.errno
report["env"] = {name: os.environ.get(name) for name in ("API_TOKEN", "POD_NAME", "POD_NAMESPACE", "GREETING")}
report["argv"] = sys.argv[1:]
report["cwd"] = os.getcwd()
open("/data/scratch/note", "w").write("scratch works")
report["scratch"] = open("/data/scratch/note").read()
config.load_incluster_config()
review = client.AuthenticationV1Api().create_self_subject_review(
    client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
)
report["whoami"] = review.status.user_info.username
json.dump(report, open("/data/out/report.json", "w"))
open("/dev/termination-log", "w").write("probe done")
"""


@pytest.mark.cluster
def test_pods_see_their_spec_and_report_exit_code_and_message(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """The executor runs Job pods the way the kubelet would, as far as the product can tell:

    - a failing command gives a Failed pod with its exit code and termination message, and a failed Job;
    - ``FallbackToLogsOnError`` turns the last 80 lines of output into the message;
    - volumes (a PVC with ``subPath`` and ``readOnly``, an emptyDir), env from a Secret and the
      downward API, ``$(VAR)`` expansion, ``workingDir``, and an in-cluster service-account token all
      appear exactly where the pod spec names them.
    """
    claim_dir = tmp_path / "claim"
    (claim_dir / "inputs").mkdir(parents=True)
    (claim_dir / "inputs" / "hello.txt").write_text("hello from the host")
    bind_directory(control_plane, namespace, "shared", claim_dir)
    control_plane.kubectl("create", "secret", "generic", "api", "--from-literal=token=s3cret", namespace=namespace)
    control_plane.kubectl("create", "serviceaccount", "prober", namespace=namespace)

    apply(
        control_plane,
        namespace,
        job_manifest("boom", {"containers": [container(["sh", "-c", "echo boom > /dev/termination-log; exit 3"])]}),
    )
    chatter = "for i in $(seq 1 100); do echo line $i; done; exit 1"
    apply(
        control_plane,
        namespace,
        job_manifest(
            "chatty",
            {"containers": [container(["sh", "-c", chatter], terminationMessagePolicy="FallbackToLogsOnError")]},
        ),
    )
    probe_container = container(
        ["python", "-c", PROBE, "$(POD_NAME)", "$$(POD_NAME)"],
        workingDir="/data/scratch/wd",
        env=[
            {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "GREETING", "value": "hi $(POD_NAMESPACE)"},
        ],
        volumeMounts=[
            {"name": "data", "mountPath": "/data/in", "subPath": "inputs", "readOnly": True},
            {"name": "data", "mountPath": "/data/out", "subPath": "outputs"},
            {"name": "scratch", "mountPath": "/data/scratch"},
        ],
    )
    apply(
        control_plane,
        namespace,
        job_manifest(
            "probe",
            {
                "serviceAccountName": "prober",
                "containers": [probe_container],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}},
                    {"name": "scratch", "emptyDir": {}},
                ],
            },
        ),
    )

    boom = terminated_pod(control_plane, namespace, "boom")
    state = boom["status"]["containerStatuses"][0]["state"]["terminated"]
    assert boom["status"]["phase"] == "Failed"
    assert (state["exitCode"], state["reason"], state["message"]) == (3, "Error", "boom\n")
    wait_for(job_condition(control_plane, namespace, "boom", "Failed"), 30, "the boom Job to fail")

    chatty = terminated_pod(control_plane, namespace, "chatty")
    message = chatty["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert message.splitlines() == [f"line {i}" for i in range(21, 101)]

    probe = terminated_pod(control_plane, namespace, "probe")
    log = control_plane.executor.log_path(namespace, probe["metadata"]["name"])
    probe_state = probe["status"]["containerStatuses"][0]["state"]["terminated"]
    assert probe["status"]["phase"] == "Succeeded", log.read_text()
    assert probe_state["message"] == "probe done"
    wait_for(job_condition(control_plane, namespace, "probe", "Complete"), 30, "the probe Job to complete")
    report = json.loads((claim_dir / "outputs" / "report.json").read_text())
    pod_name = probe["metadata"]["name"]
    assert report == {
        "read": "hello from the host",
        "write_errno": errno.EROFS,
        "env": {"API_TOKEN": "s3cret", "POD_NAME": pod_name, "POD_NAMESPACE": namespace, "GREETING": f"hi {namespace}"},
        "argv": [pod_name, "$(POD_NAME)"],
        "cwd": "/data/scratch/wd",
        "scratch": "scratch works",
        "whoami": f"system:serviceaccount:{namespace}:prober",
    }
    assert not (claim_dir / "inputs" / "new.txt").exists()


def described_pods(control_plane: ControlPlane, namespace: str, job: str) -> str:
    """``kubectl describe pod`` of the Job's pods: what a person reads to learn why a pod waits."""
    return control_plane.kubectl("describe", "pod", "-l", f"job-name={job}", namespace=namespace).stdout


@pytest.mark.cluster
def test_a_pod_of_an_unbound_claim_stays_pending_until_a_persistent_volume_binds_it(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """Claims get their directory the Kubernetes way: from the PersistentVolume bound to them.

    A pod naming a claim that does not exist, then one that no volume is bound to, stays Pending and
    unscheduled, with a ``FailedScheduling`` event that ``kubectl describe pod`` shows. Once a
    ``local`` PV reserved for the claim binds it, the pod runs with the PV's directory, read-only
    as the pod's claim source says.
    """
    folder = tmp_path / "late"
    folder.mkdir()
    (folder / "greeting").write_text("bound at last")
    script = "cat /late/greeting > /dev/termination-log; if touch /late/written 2>/dev/null; then exit 1; fi"
    pod_spec = {
        "containers": [container(["sh", "-c", script], volumeMounts=[{"name": "data", "mountPath": "/late"}])],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "late", "readOnly": True}}],
    }
    apply(control_plane, namespace, job_manifest("late", pod_spec))

    def described_with(*texts: str) -> Callable[[], bool]:
        return lambda: all(text in described_pods(control_plane, namespace, "late") for text in texts)

    wait_for(described_with("FailedScheduling", 'persistentvolumeclaim "late" not found'), 60, "no-claim event")
    apply(control_plane, namespace, persistent_volume_claim("late"))
    wait_for(described_with("unbound immediate PersistentVolumeClaims"), 60, "an unbound-claim event", interval=0.5)
    [waiting] = job_pods(control_plane, namespace, "late")
    assert waiting["status"]["phase"] == "Pending"
    assert not waiting["spec"].get("nodeName"), "a pod of an unbound claim was scheduled"

    bind_directory(control_plane, namespace, "late", folder, kind="local")
    pod = terminated_pod(control_plane, namespace, "late", timeout=90)
    log = control_plane.executor.log_path(namespace, pod["metadata"]["name"])
    assert pod["status"]["phase"] == "Succeeded", log.read_text()
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "bound at last"
    assert not (folder / "written").exists()
    pv = get(control_plane, None, "pv", f"{namespace}-late")
    assert pv["status"]["phase"] == "Bound" and pv["spec"]["local"]["path"] == str(folder.resolve())
