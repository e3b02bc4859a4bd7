"""Leader election: of several operator processes, exactly one acts; the others wait as standbys.

Two instances (the old and the new pod of a rollout, a second replica, a developer's process beside
the deployed one) would both post every Event and could both create a run-now Job. kopf's own
peering does not help here: instances of equal priority, as two pods of one Deployment are, all
pause and leave the cluster unserved. So the operator holds a ``coordination.k8s.io/v1`` Lease and
starts kopf only once it holds it:

- Every write to the Lease carries the ``resourceVersion`` read, so of two contenders the API server
  accepts one and answers the other 409 Conflict.
- A Lease held by someone else is judged expired by *our* monotonic clock: a standby notes when it
  first saw the Lease's current ``resourceVersion`` and takes over only after ``leaseDurationSeconds``
  of its own time without a change. Nobody's wall clock is compared with anybody else's.
- The leader renews every ``retry`` seconds. It trusts itself only until the *renew deadline* (two
  thirds of the duration after the start of its last successful renewal); past it, the process exits
  at once, before any standby can have waited out the full duration. The container restarts as a
  standby (or, when no one took over, leads again at once: the Lease still names its pod).
- A leader that shuts down cleanly releases the Lease, so a standby takes over at its next retry.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sessionpipe_operator.k8s import ApiError, KubeClient

ENV_LEADER_ELECTION = "SESSIONPIPE_OPERATOR_LEADER_ELECTION"
ENV_LEADER_LEASE = "SESSIONPIPE_OPERATOR_LEADER_LEASE"
ENV_LEADER_LEASE_SECONDS = "SESSIONPIPE_OPERATOR_LEADER_LEASE_SECONDS"
DEFAULT_LEASE_NAME = "sessionpipe-operator"
DEFAULT_LEASE_SECONDS = 15
MIN_LEASE_SECONDS = 3
MAX_LEASE_SECONDS = 300
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

log = logging.getLogger(__name__)


class InvalidLeaderSettings(ValueError):
    """A leader-election variable has a value the operator cannot use; the message names it."""


@dataclass(frozen=True)
class LeaderSettings:
    """Whether to elect a leader, with which Lease, as whom, and how fast a standby takes over.

    ``identity`` is the pod's name (``POD_NAME``) in a pod, else host name and process id; the Lease
    lives in the pod's namespace (``POD_NAMESPACE``, else the service account's), else ``default``.
    """

    enabled: bool
    namespace: str
    name: str
    identity: str
    duration_seconds: int = DEFAULT_LEASE_SECONDS

    @property
    def renew_deadline(self) -> float:
        """How long after its last successful renewal a leader still trusts itself."""
        return self.duration_seconds * 2 / 3

    @property
    def retry_seconds(self) -> float:
        """How often the leader renews and a standby looks again."""
        return max(0.5, self.duration_seconds / 7.5)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LeaderSettings:
        """Read the ``SESSIONPIPE_OPERATOR_LEADER_*`` variables; raise :class:`InvalidLeaderSettings`."""
        switch = environ.get(ENV_LEADER_ELECTION, "").strip().lower() or "true"
        if switch not in _TRUE + _FALSE:
            raise InvalidLeaderSettings(f"{ENV_LEADER_ELECTION}={switch!r}: use true or false")
        name = environ.get(ENV_LEADER_LEASE, "").strip() or DEFAULT_LEASE_NAME
        text = environ.get(ENV_LEADER_LEASE_SECONDS, "").strip() or str(DEFAULT_LEASE_SECONDS)
        try:
            duration = int(text)
        except ValueError:
            duration = 0
        if not MIN_LEASE_SECONDS <= duration <= MAX_LEASE_SECONDS:
            raise InvalidLeaderSettings(
                f"{ENV_LEADER_LEASE_SECONDS}={text!r}: whole seconds from {MIN_LEASE_SECONDS} to {MAX_LEASE_SECONDS}"
            )
        return cls(
            enabled=switch in _TRUE,
            namespace=_own_namespace(environ),
            name=name,
            identity=environ.get("POD_NAME", "").strip() or f"{socket.gethostname()}-{os.getpid()}",
            duration_seconds=duration,
        )


def _own_namespace(environ: Mapping[str, str]) -> str:
    namespace = environ.get("POD_NAMESPACE", "").strip()
    if not namespace and IN_CLUSTER_NAMESPACE.is_file():
        namespace = IN_CLUSTER_NAMESPACE.read_text().strip()
    return namespace or "default"


def lease_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return path if name is None else f"{path}/{name}"


# --- the rules, pure --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Observation:
    """A version of the Lease as we first saw it, and when (our monotonic clock)."""

    version: str
    since: float


def observe(previous: Observation | None, lease: Mapping[str, Any], now: float) -> Observation:
    """``previous`` if the Lease has not changed since, else the new version seen ``now``."""
    version = str(lease.get("metadata", {}).get("resourceVersion") or "")
    if previous is not None and previous.version == version:
        return previous
    return Observation(version, now)


def holder(lease: Mapping[str, Any]) -> str:
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def may_take(lease: Mapping[str, Any], identity: str, seen: Observation, now: float, default_duration: int) -> bool:
    """Whether ``identity`` may write itself into ``lease``: free, its own, or unchanged for its whole duration."""
    current = holder(lease)
    if not current or current == identity:
        return True
    duration = (lease.get("spec") or {}).get("leaseDurationSeconds") or default_duration
    return now - seen.since >= float(duration)


def claimed(lease: Mapping[str, Any] | None, identity: str, duration: int, wall: datetime) -> dict[str, Any]:
    """The Lease with ``identity`` holding it from ``wall``: a renewal if it held it, else a transition."""
    stamp = wall.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body: dict[str, Any] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {}, "spec": {}}
    if lease is not None:
        body["metadata"] = dict(lease.get("metadata") or {})
        body["spec"] = dict(lease.get("spec") or {})
    spec = body["spec"]
    if spec.get("holderIdentity") != identity:
        spec["acquireTime"] = stamp
        if lease is not None:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
    spec.update(holderIdentity=identity, leaseDurationSeconds=duration, renewTime=stamp)
    spec.setdefault("leaseTransitions", 0)
    return body


def released(lease: Mapping[str, Any], identity: str) -> dict[str, Any] | None:
    """The Lease given up by ``identity`` (no holder), or ``None`` when it is not ours to give up."""
    if holder(lease) != identity:
        return None
    body = {**lease, "spec": dict(lease.get("spec") or {})}
    body["spec"].pop("holderIdentity", None)
    body["spec"]["leaseDurationSeconds"] = 1
    return body


# --- the elector, on the API server -------------------------------------------------------------------
class LeaderElector:
    """Acquire the Lease (blocking), renew it from a thread, release it on a clean shutdown."""

    def __init__(
        self,
        client: KubeClient,
        settings: LeaderSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self._clock = clock
        self._on_change = on_change
        self._seen: Observation | None = None
        self._renewed_at = 0.0  # monotonic start of the last successful write
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._lose_once = threading.Lock()
        self._leading = False

    @property
    def path(self) -> str:
        return lease_path(self.settings.namespace, self.settings.name)

    def try_acquire(self) -> bool:
        """One round: take the Lease if it is free, ours, or expired by our clock; say whether we hold it."""
        started = self._clock()
        lease = self.client.get(self.path)
        if lease is not None:
            self._seen = observe(self._seen, lease, started)
            if not may_take(lease, self.settings.identity, self._seen, started, self.settings.duration_seconds):
                return False
        body = claimed(lease, self.settings.identity, self.settings.duration_seconds, datetime.now(UTC))
        try:
            if lease is None:
                body["metadata"] = {"name": self.settings.name, "namespace": self.settings.namespace}
                self.client.create(lease_path(self.settings.namespace), body)
            else:
                self.client.replace(self.path, body)
        except ApiError as error:
            if error.conflict:  # someone else wrote first: look again next round
                return False
            raise
        self._renewed_at = started
        return True

    def acquire(self) -> None:
        """Wait as a standby until this process holds the Lease."""
        announced = ""
        while True:
            try:
                if self.try_acquire():
                    break
                current = self._seen.version if self._seen else ""
                if current != announced:
                    lease = self.client.get(self.path) or {}
                    log.info(f"standby: Lease {self.describe()} is held by {holder(lease) or 'nobody'}")
                    announced = current
            except Exception as error:  # the client's own transport errors are not OSErrors
                log.warning(f"leader election: cannot read or write Lease {self.describe()}: {error}")
            time.sleep(self.settings.retry_seconds)
        self._set_leading(True)
        log.info(f"leading: holding Lease {self.describe()} as {self.settings.identity}")

    def keep_leading(self, on_lost: Callable[[str], None]) -> None:
        """Renew from a thread; call ``on_lost`` once the Lease is lost or cannot be renewed in time."""

        def renew() -> None:
            while not self._stop.wait(self.settings.retry_seconds):
                try:
                    if self.try_acquire():
                        continue
                    # A conflict may be anyone's write (a label, say): only another holder means lost.
                    current = holder(self.client.get(self.path) or {})
                    if current != self.settings.identity:
                        self._lose(on_lost, f"Lease {self.describe()} is now held by {current or 'nobody'}")
                        return
                except Exception as error:  # retried until the watchdog's deadline
                    log.warning(f"leader election: renewing Lease {self.describe()} failed: {error}")

        def watchdog() -> None:
            # Apart from the renewing thread: a request hanging past the deadline must not keep us leading.
            while not self._stop.wait(min(0.5, self.settings.retry_seconds)):
                since = self._clock() - self._renewed_at
                if since > self.settings.renew_deadline:
                    self._lose(on_lost, f"Lease {self.describe()} not renewed for {since:.1f}s")
                    return

        threading.Thread(target=renew, name="leader-renew", daemon=True).start()
        threading.Thread(target=watchdog, name="leader-watchdog", daemon=True).start()

    def release(self) -> None:
        """Give the Lease up (a clean shutdown), so a standby takes over at its next look."""
        self._stop.set()
        if self._lost.is_set() or not self._leading:
            return
        try:
            lease = self.client.get(self.path)
            body = released(lease, self.settings.identity) if lease is not None else None
            if body is not None:
                self.client.replace(self.path, body)
                log.info(f"released Lease {self.describe()}")
        except Exception as error:
            log.warning(f"could not release Lease {self.describe()} (a standby waits for it to expire): {error}")
        self._set_leading(False)

    def describe(self) -> str:
        return f"{self.settings.namespace}/{self.settings.name}"

    def _lose(self, on_lost: Callable[[str], None], why: str) -> None:
        with self._lose_once:
            if self._lost.is_set():
                return
            self._lost.set()
        self._stop.set()
        self._set_leading(False)
        on_lost(why)

    def _set_leading(self, leading: bool) -> None:
        self._leading = leading
        if self._on_change is not None:
            self._on_change(leading)
