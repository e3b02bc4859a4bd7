"""Applying manifests to the test control plane, the way a user does: ``kubectl apply -f -``."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from sessionpipe_kubetest.cluster import ControlPlane


def apply(control_plane: ControlPlane, namespace: str, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """``kubectl apply`` ``manifest`` in ``namespace``; a refusal raises (kubectl's stderr in the message)."""
    return control_plane.kubectl("apply", "-f", "-", namespace=namespace, input=json.dumps(manifest))
