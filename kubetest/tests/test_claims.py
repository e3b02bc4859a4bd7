"""The scheduler's and the kubelet's view of claims: when a pod may be placed, which directory it mounts.

The cluster test ``test_a_pod_of_an_unbound_claim_stays_pending_until_a_persistent_volume_binds_it``
shows the whole flow on the real binder; these check the rules without a cluster.
"""

from __future__ import annotations

from pathlib import Path

from sessionpipe_kubetest.executor.claims import claim_names, unschedulable_reason, volume_directory
from sessionpipe_kubetest.executor.kubelet import JSON
from sessionpipe_kubetest.volumes import persistent_volume


def pod_spec(*claims: str) -> JSON:
    volumes: list[JSON] = [{"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}} for i, c in enumerate(claims)]
    return {"volumes": [*volumes, {"name": "scratch", "emptyDir": {}}]}


def claim(name: str, volume: str = "", phase: str = "Pending", deleting: bool = False) -> JSON:
    metadata: JSON = {"name": name, **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {})}
    return {"metadata": metadata, "spec": {"volumeName": volume}, "status": {"phase": phase}}


def getter(*claims: JSON) -> dict[str, JSON]:
    return {f"/api/v1/namespaces/ns/persistentvolumeclaims/{c['metadata']['name']}": c for c in claims}


def test_a_pod_names_each_claim_once() -> None:
    assert claim_names(pod_spec("a", "b", "a")) == ["a", "b"]


def test_a_pod_is_placed_only_once_every_claim_is_bound() -> None:
    bound = claim("data", volume="ns-data", phase="Bound")
    assert unschedulable_reason("ns", pod_spec("data"), getter(bound).get) is None
    assert unschedulable_reason("ns", {}, getter().get) is None
    missing = unschedulable_reason("ns", pod_spec("data", "gone"), getter(bound).get)
    assert missing == '0/1 nodes are available: persistentvolumeclaim "gone" not found.'
    unbound = unschedulable_reason("ns", pod_spec("data", "late"), getter(bound, claim("late")).get)
    assert (
        unbound is not None
        and 'pod has unbound immediate PersistentVolumeClaims (persistentvolumeclaim "late"' in unbound
    )
    # Named but not yet Bound: the binder is half-way; the pod still waits.
    halfway = getter(claim("data", volume="ns-data", phase="Pending"))
    assert unschedulable_reason("ns", pod_spec("data"), halfway.get) is not None
    leaving = getter(claim("data", volume="ns-data", phase="Bound", deleting=True))
    assert "is being deleted" in (unschedulable_reason("ns", pod_spec("data"), leaving.get) or "")


def test_the_directory_is_the_host_path_or_local_path_of_the_volume(tmp_path: Path) -> None:
    assert volume_directory(persistent_volume("ns", "c", tmp_path)) == tmp_path.resolve()
    assert volume_directory(persistent_volume("ns", "c", tmp_path, kind="local")) == tmp_path.resolve()
    assert volume_directory({"spec": {"nfs": {"server": "x", "path": "/export"}}}) is None
