"""Two operator processes against the real control plane: exactly one acts, and the other takes over.

Both are ``sessionpipe-operator`` as users run it, with their own identity (``POD_NAME``) and the
leader Lease in the test's namespace (``POD_NAMESPACE``). The test counts what both could have done
twice: Jobs for one run-now token, ``RunStarted``/``RunSucceeded``/``InvalidSpec`` Events.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionpipe_contract import ANNOTATION_RUN_NOW_TOKEN
from sessionpipe_kubetest.cluster import ControlPlane
from sessionpipe_kubetest.volumes import bind_directory
from sessionpipe_kubetest.waiting import wait_for
from sessionpipe_operator.k8s import KubeClient
from sessionpipe_operator.leader import DEFAULT_LEASE_SECONDS, lease_path
from tests.cluster.operator_support import (
    CORPUS,
    OperatorProcess,
    install_crd,
    prepare_namespace,
    sessionprocessor,
)
from tests.cluster.test_operator import (
    annotate_run_now,
    condition_true,
    cr,
    events,
    jobs_of,
    start_run_now_wait_only,
    usage_spec,
    wait_for_run,
)
from tests.support.kubectl import apply

pytestmark = pytest.mark.cluster

LEASE = "sessionpipe-operator"


@pytest.fixture
def kube(k8s_api: Any) -> KubeClient:
    return KubeClient(k8s_api)


@pytest.fixture
def ns(control_plane: ControlPlane, namespace: str) -> str:
    install_crd(control_plane)
    prepare_namespace(control_plane, namespace)
    return namespace


@pytest.fixture
def peers(control_plane: ControlPlane, ns: str, tmp_path: Path) -> Iterator[dict[str, OperatorProcess]]:
    made = {
        name: OperatorProcess(
            control_plane,
            tmp_path / name,
            # Only this namespace: the Lease and everything the two may touch stay in the test's namespace.
            {"POD_NAME": name, "POD_NAMESPACE": ns, "SESSIONPIPE_OPERATOR_NAMESPACES": ns},
        )
        for name in ("peer-a", "peer-b")
    }
    try:
        yield made
    finally:
        for name, process in made.items():
            process.stop()
            print(f"\n[{name}] log: {process.log_path}")


def holder(kube: KubeClient, ns: str) -> str:
    lease = kube.get(lease_path(ns, LEASE)) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def reasons(kube: KubeClient, ns: str, name: str) -> dict[str, int]:
    """How many Event objects of each reason the SessionProcessor has, counting aggregated repeats."""
    counted: dict[str, int] = {}
    for event in events(kube, ns, name):
        if event.get("involvedObject", {}).get("kind") != "SessionProcessor":
            continue  # the CronJob of the same name has the controller's Events
        counted[event["reason"]] = counted.get(event["reason"], 0) + int(event.get("count") or 1)
    return counted


def leading(process: OperatorProcess) -> float:
    return process.metric_sum("sessionpipe_operator_leader", identity=process.extra_env["POD_NAME"])


def test_two_operators_act_once_and_the_standby_takes_over_when_the_leader_dies(
    control_plane: ControlPlane, ns: str, kube: KubeClient, peers: dict[str, OperatorProcess], tmp_path: Path
) -> None:
    a, b = peers["peer-a"], peers["peer-b"]
    database_dir = tmp_path / "warehouse"
    database_dir.mkdir()
    database_dir.chmod(0o777)  # the job image's user (10001) writes the database
    bind_directory(control_plane, ns, "transcripts", CORPUS, read_only=True)
    bind_directory(control_plane, ns, "warehouse", database_dir)

    a.start()
    wait_for(lambda: holder(kube, ns) == "peer-a", 15, "peer-a to hold the Lease")
    b.start()  # alive on /healthz as a standby
    assert holder(kube, ns) == "peer-a"
    assert (leading(a), leading(b)) == (1.0, 0.0)

    # What both would do twice: an InvalidSpec Event, a run-now Job and its Events.
    apply(control_plane, ns, sessionprocessor("broken", usage_spec(schedule="every 7m", database={"claimName": "x"})))
    apply(control_plane, ns, sessionprocessor("usage", usage_spec()))
    wait_for(lambda: condition_true(cr(kube, ns, "broken").get("status") or {}, "InvalidSpec"), 15, "InvalidSpec")
    annotate_run_now(control_plane, ns, "usage", "first")
    first = start_run_now_wait_only(kube, ns, "usage", "first")
    assert wait_for_run(kube, ns, "usage", first)["lastRun"]["outcome"] == "succeeded"
    time.sleep(3)  # room for a second instance's duplicates to show up
    assert [job["metadata"]["name"] for job in jobs_of(kube, ns, "usage")] == [first]
    assert reasons(kube, ns, "usage") == {"RunStarted": 1, "RunSucceeded": 1}
    assert reasons(kube, ns, "broken") == {"InvalidSpec": 1}
    # A run-now beside a running Job (its pod waits for a claim that does not exist): one RunSkipped, not two.
    apply(control_plane, ns, sessionprocessor("held", usage_spec(database={"claimName": "unmapped"})))
    annotate_run_now(control_plane, ns, "held", "hold")
    held = start_run_now_wait_only(kube, ns, "held", "hold")
    annotate_run_now(control_plane, ns, "held", "skip")
    wait_for(lambda: reasons(kube, ns, "held").get("RunSkipped"), 15, "RunSkipped for the second token")
    time.sleep(3)
    assert reasons(kube, ns, "held") == {"RunStarted": 1, "RunSkipped": 1}
    assert [job["metadata"]["name"] for job in jobs_of(kube, ns, "held")] == [held]
    assert f"[{ns}/" not in b.log_text(), "the standby handled an object"
    assert holder(kube, ns) == "peer-a"

    # The leader dies without a word; a token arrives; the standby serves it after the Lease expires.
    a.stop(signal.SIGKILL)
    killed = time.monotonic()
    annotate_run_now(control_plane, ns, "usage", "second")
    second = wait_for(
        lambda: next(
            (
                job["metadata"]["name"]
                for job in jobs_of(kube, ns, "usage")
                if (job["metadata"].get("annotations") or {}).get(ANNOTATION_RUN_NOW_TOKEN) == "second"
            ),
            None,
        ),
        DEFAULT_LEASE_SECONDS + 30,
        "the standby to serve the run-now token",
        interval=0.3,
    )
    took = time.monotonic() - killed
    print(f"\nstandby served the token {took:.1f}s after the leader was killed")
    assert DEFAULT_LEASE_SECONDS * 2 / 3 <= took <= DEFAULT_LEASE_SECONDS + 30
    assert holder(kube, ns) == "peer-b"
    assert leading(b) == 1.0
    assert wait_for_run(kube, ns, "usage", second)["lastRun"]["outcome"] == "succeeded"
    time.sleep(3)
    assert sorted(job["metadata"]["name"] for job in jobs_of(kube, ns, "usage")) == sorted([first, second])
    assert reasons(kube, ns, "usage") == {"RunStarted": 2, "RunSucceeded": 2}
    assert reasons(kube, ns, "broken") == {"InvalidSpec": 1}, "the new leader repeated an Event"

    # A rollout: the old pod comes back as a standby; the leader stops cleanly and hands over at once.
    a.start()
    assert holder(kube, ns) == "peer-b"
    b.stop(signal.SIGTERM)
    stopped = time.monotonic()
    wait_for(lambda: holder(kube, ns) == "peer-a", 10, "peer-a to take the released Lease", interval=0.2)
    handover = time.monotonic() - stopped
    print(f"handover after a clean stop: {handover:.1f}s")
    assert handover < DEFAULT_LEASE_SECONDS / 2
    annotate_run_now(control_plane, ns, "usage", "third")
    third = start_run_now_wait_only(kube, ns, "usage", "third")
    assert wait_for_run(kube, ns, "usage", third)["lastRun"]["outcome"] == "succeeded"
    time.sleep(2)
    assert reasons(kube, ns, "usage") == {"RunStarted": 3, "RunSucceeded": 3}
    assert reasons(kube, ns, "broken") == {"InvalidSpec": 1}
