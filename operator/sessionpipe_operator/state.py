"""What the handlers share: settings, the API client, what was last applied, per-processor locks."""

from __future__ import annotations

import asyncio
import copy
import threading
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from sessionpipe_operator.k8s import KubeClient
from sessionpipe_operator.settings import OperatorSettings

Key = tuple[str, str]  # (namespace, SessionProcessor name)


@dataclass
class OperatorState:
    """What the handlers share: settings, the API client, and what was last applied per processor.

    Kopf shallow-copies the memo for every resource; this one object is what the copies share.
    Handlers run in kopf's thread pool, so mutation goes through the locks.
    """

    settings: OperatorSettings
    kube: KubeClient | None = None
    #: The CronJob last rendered for each valid processor; absent while a spec is invalid.
    desired: dict[Key, dict[str, Any]] = field(default_factory=dict)
    #: resourceVersion our own last apply produced, so its watch echo is not taken for drift.
    applied_versions: dict[Key, str] = field(default_factory=dict)
    bodies: Any = None  # the kopf index of SessionProcessor bodies, set at start-up
    stale_task: asyncio.Task[None] | None = None
    progress_task: asyncio.Task[None] | None = None
    _locks: dict[Key, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @property
    def client(self) -> KubeClient:
        if self.kube is None:
            raise kopf.TemporaryError("the operator's API client is not ready yet", delay=1)
        return self.kube

    def forget(self, key: Key) -> None:
        """Drop what was applied for ``key``: its SessionProcessor is gone."""
        self.desired.pop(key, None)
        self.applied_versions.pop(key, None)


def index_value(index: Any, key: Key) -> dict[str, Any] | None:
    """The one value a kopf index holds under ``key`` (or ``None``)."""
    if index is None or key not in index:
        return None
    for value in index[key]:
        return cast(dict[str, Any], value)
    return None


def plain(body: Any) -> dict[str, Any]:
    """A deep, plain-dict copy of a kopf body (kopf's views are read-only and live)."""
    return copy.deepcopy(dict(body))
