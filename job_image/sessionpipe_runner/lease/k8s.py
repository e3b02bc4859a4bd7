"""The cluster lease: a ``coordination.k8s.io/v1`` Lease that serialises the writers of one database.

Several processors, each its own CronJob, write the same DuckDB file; on a shared network volume
DuckDB's own file lock cannot be trusted, so writers take this Lease first.

How it stays safe without trusting anybody's wall clock:

- Every write to the Lease carries the ``resourceVersion`` we read, so two contenders cannot both
  win: the API server accepts one update and answers the other with 409 Conflict.
- A Lease held by someone else is judged expired by *our* monotonic clock: we note when we first
  saw its current ``resourceVersion`` and take it over only after ``leaseDurationSeconds`` of our
  own time have passed without that version changing. The holder's ``renewTime`` is never compared
  with our clock.
- The holder renews from a background thread every third of the duration. It trusts itself only
  until the *renew deadline* (two thirds of the duration after the start of its last successful
  renewal): the runner calls :meth:`KubernetesLease.check` before every commit, and a holder that
  was frozen, partitioned or cut off from the API server stops writing before anyone else can
  have taken over.
- Each acquisition increments ``leaseTransitions``; the runner turns that into its writer epoch,
  records it in ``writer_epochs`` and refuses to commit once a newer epoch is recorded.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sessionpipe_contract import ANNOTATION_PROGRESS, DEFAULT_LEASE_DURATION_SECONDS
from sessionpipe_runner.lease import LeaseLost, LeaseNotAcquired, announce_wait

log = logging.getLogger(__name__)

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class LeaseConfigError(Exception):
    """The cluster cannot be reached or configured (no kubeconfig, bad namespace…)."""


def default_holder(environ: dict[str, str] | None = None) -> str:
    """The pod's name inside a pod; host name and process id elsewhere."""
    environ = dict(os.environ) if environ is None else environ
    return environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def load_api_client(namespace: str | None, environ: dict[str, str] | None = None) -> tuple[Any, str]:
    """An ApiClient for the in-cluster config (in a pod) or the current kubeconfig, and the namespace.

    The namespace is the explicit one, else the pod's (``POD_NAMESPACE`` or the service-account
    mount), else the kubeconfig context's, else ``default``.
    """
    environ = dict(os.environ) if environ is None else environ
    try:
        from kubernetes import client
        from kubernetes import config as kube_config
    except ImportError:  # pragma: no cover - the job image always has it
        raise LeaseConfigError("Kubernetes leases need the 'kubernetes' package: 'sessionpipe[job]'") from None
    config: Any = kube_config
    configuration = client.Configuration()
    context_namespace: str | None = None
    try:
        if environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
            if IN_CLUSTER_NAMESPACE.is_file():
                context_namespace = IN_CLUSTER_NAMESPACE.read_text().strip() or None
        else:
            config.load_kube_config(client_configuration=configuration)
            _, active = config.list_kube_config_contexts()
            context_namespace = (active or {}).get("context", {}).get("namespace")
    except Exception as error:
        raise LeaseConfigError(f"cannot configure the Kubernetes client for the lease: {error}") from None
    chosen = namespace or environ.get("POD_NAMESPACE") or context_namespace or "default"
    return client.ApiClient(configuration), chosen


def _timestamp() -> str:
    """Now, as the MicroTime the Lease API expects."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class KubernetesLease:
    """A ``coordination.k8s.io/v1`` Lease held for the length of one run."""

    def __init__(
        self,
        name: str,
        namespace: str,
        holder: str,
        api_client: Any,
        *,
        duration_seconds: int = DEFAULT_LEASE_DURATION_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        if duration_seconds < 3:
            raise ValueError("the lease duration must be at least 3 seconds")
        self._name = name
        self._namespace = namespace
        self._holder = holder
        # Bodies are plain manifests (dicts), which the typed client methods accept at run time.
        self._api: Any = client.CoordinationV1Api(api_client)
        self._duration = duration_seconds
        self._renew_every = duration_seconds / 3
        self._renew_deadline = duration_seconds * 2 / 3
        self._request_timeout = max(1.0, duration_seconds / 3)
        self._poll = min(0.5, duration_seconds / 10)
        self._clock = clock
        self._lock = threading.Lock()
        self._valid_until = 0.0  # by our monotonic clock; 0: not held
        self._lost: str | None = None
        self._resource_version: str | None = None
        self._acquired = ""
        self._transitions = 0
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._progress: str | None = None

    @property
    def holder(self) -> str:
        return self._holder

    @property
    def name(self) -> str:
        return f"k8s:{self._namespace}/{self._name}"

    # --- acquiring ---------------------------------------------------------------------------
    def acquire(self, wait_seconds: float) -> int:
        """Take the Lease within ``wait_seconds``; return the epoch of this acquisition."""
        from kubernetes.client.exceptions import ApiException

        deadline = self._clock() + max(wait_seconds, 0.0)
        seen_version: str | None = None
        seen_since = 0.0
        last_holder = "another writer"
        while True:
            started = self._clock()
            try:
                epoch = self._try_acquire(seen_version, seen_since, started)
            except ApiException as error:
                if error.status not in (409, 500, 502, 503, 504, 429):
                    raise LeaseConfigError(self._explain(error)) from None
                epoch = None
            except _Held as held:
                if seen_version is None and wait_seconds > 0:
                    announce_wait(self.name, held.holder, wait_seconds)
                last_holder = held.holder
                if held.version != seen_version:
                    seen_version, seen_since = held.version, started
                epoch = None
            except Exception as error:  # the API server unreachable: keep waiting
                log.debug("lease %s: %s", self.name, error)
                epoch = None
            if epoch is not None:
                self._start_renewing()
                return epoch
            if self._clock() >= deadline:
                raise LeaseNotAcquired(f"database lease {self.name} is held by {last_holder}; waited {wait_seconds:g}s")
            time.sleep(min(self._poll, max(deadline - self._clock(), 0.0)))

    def _try_acquire(self, seen_version: str | None, seen_since: float, started: float) -> int | None:
        from kubernetes.client.exceptions import ApiException

        try:
            current = self._api.read_namespaced_lease(
                self._name, self._namespace, _request_timeout=self._request_timeout
            )
        except ApiException as error:
            if error.status != 404:
                raise
            acquired = _timestamp()
            body = self._body(transitions=0, acquired=acquired)
            created = self._api.create_namespaced_lease(self._namespace, body, _request_timeout=self._request_timeout)
            return self._won(created, started, acquired)
        spec = current.spec
        holder = spec.holder_identity if spec is not None else None
        version = current.metadata.resource_version
        duration = (spec.lease_duration_seconds if spec is not None else None) or self._duration
        if holder and holder != self._holder:
            expired = seen_version == version and started - seen_since >= duration
            if not expired:
                raise _Held(holder, version)
        transitions = (spec.lease_transitions if spec is not None else None) or 0
        acquired = _timestamp()
        body = self._body(transitions=transitions + 1, resource_version=version, acquired=acquired)
        replaced = self._api.replace_namespaced_lease(
            self._name, self._namespace, body, _request_timeout=self._request_timeout
        )
        return self._won(replaced, started, acquired)

    def _won(self, lease: Any, started: float, acquired: str) -> int:
        transitions = int(lease.spec.lease_transitions or 0)
        with self._lock:
            self._resource_version = lease.metadata.resource_version
            self._acquired = acquired
            self._transitions = transitions
            self._valid_until = started + self._renew_deadline
            self._lost = None
        return transitions + 1

    def _body(
        self, *, transitions: int, resource_version: str | None = None, acquired: str | None = None
    ) -> dict[str, Any]:
        """The Lease as we write it: held by us since ``acquired``, or, without it, released."""
        metadata: dict[str, Any] = {"name": self._name, "namespace": self._namespace}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        spec: dict[str, Any] = {"leaseDurationSeconds": self._duration, "leaseTransitions": transitions}
        if acquired is not None:
            spec.update(holderIdentity=self._holder, acquireTime=acquired, renewTime=_timestamp())
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def _explain(self, error: Any) -> str:
        if error.status == 403:
            return (
                f"not allowed to use Lease {self._name} in namespace {self._namespace}: the service account "
                "needs get, create and update on leases.coordination.k8s.io"
            )
        return f"Lease {self._name} in namespace {self._namespace}: {error.status} {error.reason}"

    # --- holding -----------------------------------------------------------------------------
    def publish_progress(self, value: str) -> None:
        """Carry ``value`` in the Lease's progress annotation from the next renewal on.

        No request of its own: the renewals the Lease needs anyway (every third of its duration)
        carry it, and the release drops it.
        """
        with self._lock:
            self._progress = value

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"lease-{self._name}", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self._renew_every):
            if not self._renew_once():
                return

    def _renew_once(self) -> bool:
        """Renew once; False when the Lease is gone for good (taken over or deleted)."""
        from kubernetes.client.exceptions import ApiException

        started = self._clock()
        with self._lock:
            version, acquired, transitions = self._resource_version, self._acquired, self._transitions
            progress = self._progress
        body = self._body(transitions=transitions, resource_version=version, acquired=acquired)
        if progress is not None:
            body["metadata"]["annotations"] = {ANNOTATION_PROGRESS: progress}
        try:
            renewed = self._api.replace_namespaced_lease(
                self._name, self._namespace, body, _request_timeout=self._request_timeout
            )
        except ApiException as error:
            if error.status in (404, 409):
                # Our resourceVersion is stale: someone else wrote the Lease, so it is theirs now.
                self._mark_lost(f"Lease {self.name} changed under us ({error.status} {error.reason})")
                return False
            log.warning("renewing %s failed: %s %s", self.name, error.status, error.reason)
            return True
        except Exception as error:  # unreachable API server: the renew deadline decides
            log.warning("renewing %s failed: %s", self.name, error)
            return True
        with self._lock:
            if self._lost is None:
                self._resource_version = renewed.metadata.resource_version
                self._valid_until = started + self._renew_deadline
        return True

    def _mark_lost(self, reason: str) -> None:
        with self._lock:
            self._lost = reason
            self._valid_until = 0.0

    def check(self) -> None:
        with self._lock:
            lost, valid_until = self._lost, self._valid_until
        if lost is not None:
            raise LeaseLost(lost)
        now = self._clock()
        if now > valid_until:
            raise LeaseLost(
                f"Lease {self.name} not renewed within its renew deadline "
                f"({self._renew_deadline:g}s of a {self._duration}s lease)"
            )

    # --- releasing ---------------------------------------------------------------------------
    def release(self) -> None:
        """Clear the holder so the next writer starts at once; best effort, safe to call twice."""
        from kubernetes.client.exceptions import ApiException

        self._stop.set()
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.join(timeout=self._request_timeout * 2 + 1)
        with self._lock:
            version, lost = self._resource_version, self._lost
            self._valid_until = 0.0
            self._resource_version = None
            self._progress = None
        if version is None or lost is not None:
            return
        # No holder: the next writer takes it at once instead of waiting out the duration. The body
        # has no annotations, so the finished run's progress goes with it.
        body = self._body(transitions=self._transitions, resource_version=version)
        try:
            self._api.replace_namespaced_lease(
                self._name, self._namespace, body, _request_timeout=self._request_timeout
            )
        except ApiException as error:
            log.warning("releasing %s failed: %s %s", self.name, error.status, error.reason)
        except Exception as error:
            log.warning("releasing %s failed: %s", self.name, error)


class _Held(Exception):
    """The Lease is held by someone else and not (yet) expired by our clock."""

    def __init__(self, holder: str, version: str) -> None:
        super().__init__(holder)
        self.holder = holder
        self.version = version
