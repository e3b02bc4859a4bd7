"""Kubernetes Events the operator posts on purpose, behind two functions tests can observe.

Kopf posts them in the background from the handler's context; the object is a plain manifest, of
which kopf reads only the reference fields (apiVersion, kind, namespace, name, uid).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf


def post_info(obj: Mapping[str, Any], *, reason: str, message: str) -> None:
    """A Normal Event on ``obj``."""
    kopf.info(cast(kopf.Body, obj), reason=reason, message=message)


def post_warn(obj: Mapping[str, Any], *, reason: str, message: str) -> None:
    """A Warning Event on ``obj``."""
    kopf.warn(cast(kopf.Body, obj), reason=reason, message=message)
