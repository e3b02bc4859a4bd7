"""Binding a test's PersistentVolumeClaim to a host folder: one place, so the mechanism can change here.

Today the executor maps a claim name straight to a folder (``PodExecutor.map_claim``); a claim bound
through a PersistentVolume would replace the body of :func:`claim_folder`, not its callers.
"""

from __future__ import annotations

from pathlib import Path

from sessionpipe_kubetest.cluster import ControlPlane


def claim_folder(control_plane: ControlPlane, namespace: str, claim: str, folder: Path) -> None:
    """Pods of ``namespace`` that mount the claim ``claim`` see ``folder``."""
    control_plane.executor.map_claim(namespace, claim, folder)
