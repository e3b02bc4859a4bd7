"""The Lease between runner pods of the real job image: a deleted pod releases it, a waiting pod takes over.

``test_lease.py`` runs the runner outside a pod, as a laptop user would (kubeconfig, host name and
pid as the holder). Here both runners are pods of ``localhost/sessionpipe-job:<version>`` (``make
images``): in-cluster credentials of a service account with the chart's Lease verbs, the pod name as
the holder, the sessions and the database on claims bound to PVs, and SIGTERM from a pod deletion.
The test plugin ``lines`` (tests/plugins) is bound into the image and found through ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from sessionpipe_contract import EXIT_OK, EXIT_TERMINATED
from sessionpipe_kubetest import images
from sessionpipe_kubetest.cluster import ControlPlane
from sessionpipe_kubetest.executor import PodProcess
from sessionpipe_kubetest.volumes import bind_directory
from sessionpipe_kubetest.waiting import wait_for
from tests.cluster.test_lease import _sessions
from tests.runner_support import PLUGINS, install_test_plugin
from tests.support.kubectl import apply

pytestmark = [pytest.mark.cluster, pytest.mark.images]

#: Long enough that a takeover well before it ends can only come from a release, not an expiry.
DURATION = 30


def _runner_pod(name: str, image: str, site: Path, *extra: str, sleep: str) -> dict[str, Any]:
    def field(path: str) -> dict[str, Any]:
        return {"fieldRef": {"fieldPath": path}}

    container = {
        "name": "runner",
        "image": image,
        "args": [
            *("run", "--processor", "lines", "--sessions", "/sessions", "--db", "/db/lease.duckdb"),
            *("--lease", "k8s:shared", "--lease-duration", str(DURATION), "--json", *extra),
        ],
        "env": [
            {"name": "PYTHONPATH", "value": "/site:/plugins"},
            {"name": "POD_NAME", "valueFrom": field("metadata.name")},
            {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
            {"name": "TESTPLUGIN_SLEEP", "value": sleep},
            {"name": "TESTPLUGIN_BATCHABLE", "value": "0"},
        ],
        "securityContext": {"readOnlyRootFilesystem": True, "runAsNonRoot": True},
        "volumeMounts": [
            {"name": "sessions", "mountPath": "/sessions", "readOnly": True},
            {"name": "db", "mountPath": "/db"},
            {"name": "site", "mountPath": "/site", "readOnly": True},
            {"name": "plugins", "mountPath": "/plugins", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "runner",
            "containers": [container],
            "volumes": [
                {"name": "sessions", "persistentVolumeClaim": {"claimName": "transcripts", "readOnly": True}},
                {"name": "db", "persistentVolumeClaim": {"claimName": "warehouse"}},
                {"name": "site", "hostPath": {"path": str(site)}},
                {"name": "plugins", "hostPath": {"path": str(PLUGINS)}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }


def _holder(control_plane: ControlPlane, namespace: str) -> str | None:
    found = control_plane.kubectl("get", "lease", "shared", "-o", "json", "--ignore-not-found", namespace=namespace)
    return json.loads(found.stdout)["spec"].get("holderIdentity") if found.stdout.strip() else None


def _exited(control_plane: ControlPlane, namespace: str, pod: str) -> PodProcess | None:
    """The pod's process once the executor has seen it exit."""
    process = control_plane.executor.process(namespace, pod)
    return process if process is not None and process.exit_code is not None else None


def test_deleting_the_holding_pod_releases_the_lease_and_the_waiting_pod_takes_over_at_once(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    images.build_all()
    image = images.image_tag("job")
    database = tmp_path / "db"
    database.mkdir()
    database.chmod(0o777)  # the job image's user (10001) writes the database
    bind_directory(control_plane, namespace, "transcripts", _sessions(tmp_path / "sessions", 30), read_only=True)
    bind_directory(control_plane, namespace, "warehouse", database)
    site = install_test_plugin(tmp_path / "site")
    control_plane.kubectl("create", "serviceaccount", "runner", namespace=namespace)
    control_plane.kubectl(
        "create",
        "role",
        "leases",
        "--verb=get,create,update",
        "--resource=leases.coordination.k8s.io",
        namespace=namespace,
    )
    control_plane.kubectl(
        "create",
        "rolebinding",
        "leases",
        "--role=leases",
        "--serviceaccount",
        f"{namespace}:runner",
        namespace=namespace,
    )

    apply(control_plane, namespace, _runner_pod("first", image, site, sleep="1"))
    wait_for(lambda: _holder(control_plane, namespace) == "first", 120, "the first pod to hold the lease", interval=0.5)
    apply(control_plane, namespace, _runner_pod("second", image, site, "--lease-wait", "120", sleep="0.1"))
    second_log = control_plane.executor.log_path(namespace, "second")
    wait_for(
        lambda: second_log.exists() and "is held by first" in second_log.read_text(errors="replace"),
        120,
        "the second pod to wait for the held lease",
        interval=0.5,
    )

    control_plane.kubectl("delete", "pod", "first", "--wait=false", namespace=namespace)
    deleted_at = time.monotonic()
    wait_for(lambda: _holder(control_plane, namespace) == "second", DURATION, "the second pod to take over")
    took_over = time.monotonic() - deleted_at
    first = wait_for(lambda: _exited(control_plane, namespace, "first"), 60, "the first pod's runner to exit")
    assert first.exit_code == EXIT_TERMINATED, control_plane.executor.log_path(namespace, "first").read_text()
    # A release, not an expiry: the lease (30 s) would still have been valid for most of its term.
    assert took_over < DURATION / 2, f"the second pod took over {took_over:.1f}s after the deletion"

    second = wait_for(
        lambda: _exited(control_plane, namespace, "second"), 180, "the second pod to finish", interval=0.5
    )
    assert second.exit_code == EXIT_OK, second_log.read_text()
