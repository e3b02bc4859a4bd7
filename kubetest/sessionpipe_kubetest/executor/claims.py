"""PersistentVolumeClaims as the scheduler and the kubelet see them: bound or not, and the PV's directory.

The controller manager's PersistentVolume binder binds claims to volumes; the executor only reads
the result. As the scheduler's VolumeBinding plugin, it keeps a pod whose claim is missing or unbound
from being scheduled (:func:`unschedulable_reason`); as the kubelet, it mounts the directory of the
PV a claim is bound to (:func:`volume_directory`). Pure functions over the API objects.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sessionpipe_kubetest.executor.kubelet import JSON

#: Reads one API object by path; None when it does not exist.
Getter = Callable[[str], JSON | None]


def claim_names(pod_spec: JSON) -> list[str]:
    """The claims the pod's volumes name, in order, each once."""
    names = [
        volume["persistentVolumeClaim"]["claimName"]
        for volume in pod_spec.get("volumes") or []
        if "persistentVolumeClaim" in volume
    ]
    return list(dict.fromkeys(names))


def claim_path(namespace: str, claim: str) -> str:
    return f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}"


def unschedulable_reason(namespace: str, pod_spec: JSON, get: Getter) -> str | None:
    """Why the scheduler would not place the pod because of its claims, in its words; None if it would.

    A missing claim, one being deleted, or one no volume is bound to yet (the claims here bind
    ``Immediate``: no StorageClass delays them) each keep the pod unscheduled.
    """
    unbound: list[str] = []
    for name in claim_names(pod_spec):
        claim = get(claim_path(namespace, name))
        if claim is None:
            return f'0/1 nodes are available: persistentvolumeclaim "{name}" not found.'
        if claim["metadata"].get("deletionTimestamp"):
            return f'0/1 nodes are available: persistentvolumeclaim "{name}" is being deleted.'
        if not bound_volume(claim):
            unbound.append(name)
    if unbound:
        names = ", ".join(f'persistentvolumeclaim "{name}" not bound' for name in unbound)
        return f"0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims ({names})."
    return None


def bound_volume(claim: JSON) -> str | None:
    """The name of the PV the claim is bound to, once the binder has finished binding it."""
    name = (claim.get("spec") or {}).get("volumeName")
    bound = (claim.get("status") or {}).get("phase") == "Bound"
    return str(name) if name and bound else None


def volume_directory(volume: JSON) -> Path | None:
    """The host directory of a ``hostPath`` or ``local`` PV; None for any other kind of volume."""
    spec = volume.get("spec") or {}
    source = spec.get("hostPath") or spec.get("local")
    return Path(source["path"]) if source and source.get("path") else None
