"""Host directories as PersistentVolumes: a PV (``hostPath`` or ``local``) reserved for one claim, and the claim.

The controller manager's PersistentVolume binder binds the two; the pod executor then mounts the
PV's directory wherever a pod names the claim (:mod:`sessionpipe_kubetest.executor.claims`). This is
how a user gives a claim a directory on a one-node cluster, so tests, ``make demo-cluster`` and a
person at a shell all do it the same way.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Literal, Protocol

from sessionpipe_kubetest.executor.kubelet import NODE_NAME
from sessionpipe_kubetest.waiting import wait_for

#: The class every PV and PVC made here names. No StorageClass object exists, so the binder binds
#: at once (``Immediate``) and no provisioner is asked for a volume.
STORAGE_CLASS = "sessionpipe-local"
#: The size PVs and claims state; nothing enforces it on a host directory.
SIZE = "1Gi"

JSON = dict[str, Any]
VolumeKind = Literal["hostPath", "local"]


class Kubectl(Protocol):
    """What runs kubectl against the cluster: a :class:`~sessionpipe_kubetest.cluster.ControlPlane`, or
    a :class:`~sessionpipe_kubetest.cluster.KubeconfigKubectl` for one started by ``up``."""

    def kubectl(
        self, *args: str, namespace: str | None = None, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...


def volume_name(namespace: str, claim: str) -> str:
    """The PV reserved for ``namespace/claim`` (PVs are cluster-wide: the namespace keeps names apart)."""
    return f"{namespace}-{claim}"


def persistent_volume(
    namespace: str, claim: str, host_dir: Path, kind: VolumeKind = "hostPath", read_only: bool = False
) -> JSON:
    """A PV for ``host_dir``, reserved (``claimRef``) for ``namespace/claim`` and kept when the claim goes."""
    path = str(Path(host_dir).resolve())
    source: JSON
    if kind == "hostPath":
        source = {"hostPath": {"path": path, "type": "Directory"}}
    else:
        # A local PV must say which node holds it: the executor's one node.
        source = {
            "local": {"path": path},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}
                            ]
                        }
                    ]
                }
            },
        }
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": volume_name(namespace, claim)},
        "spec": {
            "capacity": {"storage": SIZE},
            "accessModes": _access_modes(read_only),
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": STORAGE_CLASS,
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace, "name": claim},
            **source,
        },
    }


def persistent_volume_claim(claim: str, read_only: bool = False) -> JSON:
    """The claim a :func:`persistent_volume` binds to (``ReadOnlyMany`` for a read-only one)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim},
        "spec": {
            "accessModes": _access_modes(read_only),
            "storageClassName": STORAGE_CLASS,
            "resources": {"requests": {"storage": SIZE}},
        },
    }


def _access_modes(read_only: bool) -> list[str]:
    return ["ReadOnlyMany"] if read_only else ["ReadWriteOnce"]


def bind_directory(
    cluster: Kubectl,
    namespace: str,
    claim: str,
    host_dir: Path,
    *,
    kind: VolumeKind = "hostPath",
    read_only: bool = False,
    create_claim: bool = True,
    timeout: float = 60,
) -> str:
    """Give claim ``namespace/claim`` the directory ``host_dir``: a PV reserved for it, the claim
    (unless ``create_claim`` is false: someone else, a Helm chart say, makes it), and a wait until
    the binder has bound them. Idempotent; a PV left ``Released`` by a deleted claim, or naming
    another directory, is replaced. Return the PV's name.

    ``read_only`` asks for ``ReadOnlyMany``; what keeps a pod from writing is the ``readOnly`` of its
    volume or mount, as in any cluster.
    """
    name = volume_name(namespace, claim)
    wanted = persistent_volume(namespace, claim, host_dir, kind, read_only)
    existing = _get(cluster, None, "pv", name)
    if existing is not None and _stale(existing, wanted):
        cluster.kubectl("delete", "pv", name, "--wait=true", "--timeout=60s")
        existing = None
    if existing is None:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(wanted))
    if create_claim and _get(cluster, namespace, "pvc", claim) is None:
        cluster.kubectl(
            "apply", "-f", "-", namespace=namespace, input=json.dumps(persistent_volume_claim(claim, read_only))
        )
    if create_claim:
        wait_for(
            lambda: claim_phase(cluster, namespace, claim) == "Bound", timeout, f"claim {namespace}/{claim} to bind"
        )
    return name


def claim_phase(cluster: Kubectl, namespace: str, claim: str) -> str | None:
    """The claim's ``status.phase`` (``Pending``, ``Bound``, ``Lost``), or None if it does not exist."""
    found = _get(cluster, namespace, "pvc", claim)
    return None if found is None else (found.get("status") or {}).get("phase")


def _stale(existing: JSON, wanted: JSON) -> bool:
    """A PV that cannot serve the claim again: released by a deleted claim, or for another directory."""
    if (existing.get("status") or {}).get("phase") in ("Released", "Failed"):
        return True
    spec, want = existing.get("spec") or {}, wanted["spec"]
    return bool(
        (spec.get("hostPath") or spec.get("local") or {}).get("path")
        != (want.get("hostPath") or want.get("local"))["path"]
        or spec.get("claimRef", {}).get("name") != want["claimRef"]["name"]
        or spec.get("claimRef", {}).get("namespace") != want["claimRef"]["namespace"]
    )


def _get(cluster: Kubectl, namespace: str | None, *what: str) -> JSON | None:
    result = cluster.kubectl("get", *what, "-o", "json", "--ignore-not-found", namespace=namespace)
    text = result.stdout.strip()
    return json.loads(text) if text else None
