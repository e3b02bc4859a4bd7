"""Pods that name a local image (``localhost/…``) run inside that image, as a kubelet would run them.

The pod executor takes the image's root filesystem from buildah's local store (``make images``; the
fixture builds what is missing), runs the container as the image's user with its entrypoint, CMD and
working directory, binds the pod's volumes into it, and leaves a pod whose image is not in the store
waiting with ``ErrImagePull``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sessionpipe_kubetest import images
from sessionpipe_kubetest.cluster import ControlPlane
from sessionpipe_kubetest.volumes import bind_directory
from sessionpipe_kubetest.waiting import wait_for
from tests.cluster.test_controlplane import get, job_manifest, terminated_pod
from tests.runner_support import CORPUS, assert_same, sessionpipe
from tests.support.kubectl import apply

pytestmark = [pytest.mark.cluster, pytest.mark.images]


@pytest.fixture(scope="module")
def job_image() -> str:
    images.build_all()
    return images.image_tag("job")


def test_a_job_pod_of_the_local_job_image_runs_in_it_and_gives_the_host_totals(
    control_plane: ControlPlane, namespace: str, job_image: str, tmp_path: Path
) -> None:
    database = tmp_path / "db"
    database.mkdir()
    database.chmod(0o777)  # the image's user (10001) writes the database
    bind_directory(control_plane, namespace, "transcripts", CORPUS, read_only=True)
    bind_directory(control_plane, namespace, "results", database)
    volumes = [
        {"name": "sessions", "persistentVolumeClaim": {"claimName": "transcripts", "readOnly": True}},
        {"name": "results", "persistentVolumeClaim": {"claimName": "results"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts = [
        {"name": "sessions", "mountPath": "/sessions", "subPath": "sniffly", "readOnly": True},
        {"name": "results", "mountPath": "/db"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    usage = {
        "name": "main",
        "image": job_image,
        # No command: the image's ENTRYPOINT (sessionpipe) with these args in place of its CMD.
        "args": ["run", "--processor", "usage", "--sessions", "/sessions", "--db", "/db/sessionpipe.duckdb"],
        "securityContext": {"readOnlyRootFilesystem": True, "runAsNonRoot": True},
        "volumeMounts": mounts,
    }
    writer = {
        "name": "main",
        "image": job_image,
        "command": ["python", "-c", "import os; print(os.getuid()); open('/opt/venv/probe', 'w')"],
        "securityContext": {"readOnlyRootFilesystem": True},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    apply(control_plane, namespace, job_manifest("usage", {"containers": [usage], "volumes": volumes}))
    apply(control_plane, namespace, job_manifest("writer", {"containers": [writer]}))

    pod = terminated_pod(control_plane, namespace, "usage", timeout=180)
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    assert (database / "sessionpipe.duckdb").stat().st_uid == 10001
    host_db = tmp_path / "host.duckdb"
    assert sessionpipe("run", "--processor", "usage", "--sessions", CORPUS / "sniffly", "--db", host_db).returncode == 0
    by_day = ("report", "usage", "--by", "day", "--json", "--db")
    in_pod = sessionpipe(*by_day, database / "sessionpipe.duckdb")
    on_host = sessionpipe(*by_day, host_db)
    assert json.loads(in_pod.stdout)["daily"], in_pod.stderr
    assert_same(json.loads(in_pod.stdout), json.loads(on_host.stdout))

    refused = terminated_pod(control_plane, namespace, "writer", timeout=120)
    terminated = refused["status"]["containerStatuses"][0]["state"]["terminated"]
    assert refused["status"]["phase"] == "Failed"
    assert terminated["message"].startswith("10001\n") and "Read-only file system" in terminated["message"]


def test_a_local_image_missing_from_the_store_leaves_the_pod_waiting_with_err_image_pull(
    control_plane: ControlPlane, namespace: str
) -> None:
    missing = {"name": "main", "image": "localhost/sessionpipe-absent:0.0.0", "args": ["run"]}
    apply(control_plane, namespace, job_manifest("absent", {"containers": [missing]}))

    def waiting_reason() -> str | None:
        pods = get(control_plane, namespace, "pods", "-l", "job-name=absent")["items"]
        statuses = pods[0]["status"].get("containerStatuses") if pods else None
        waiting = (statuses[0]["state"].get("waiting") or {}) if statuses else {}
        reason: str | None = waiting.get("reason")
        return reason

    wait_for(lambda: waiting_reason() == "ErrImagePull", 60, "the pod to wait with ErrImagePull", interval=0.5)
    listed = control_plane.kubectl("get", "pods", "-l", "job-name=absent", namespace=namespace).stdout
    assert "ErrImagePull" in listed, listed
    pods = get(control_plane, namespace, "pods", "-l", "job-name=absent")["items"]
    message = pods[0]["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert "localhost/sessionpipe-absent:0.0.0" in message and "make images" in message
    assert pods[0]["status"]["phase"] == "Pending"
