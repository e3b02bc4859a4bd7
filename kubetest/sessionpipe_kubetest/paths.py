"""Where the repository is: the control plane's ``.cluster`` folder and the pods' "image" live there."""

from __future__ import annotations

from pathlib import Path

#: The checkout this package belongs to (``kubetest/`` sits at its root). Pods run the checkout's
#: editable install, so the executor binds it into every pod's mount namespace.
REPOSITORY = Path(__file__).resolve().parents[2]
