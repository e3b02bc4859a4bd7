"""The executor: registers its node, watches pods, binds the unbound, and runs a :class:`PodRun` per pod.

It plays the scheduler (every unbound pod goes to the node ``local-executor``) and the kubelet's
pod workers; the API calls of the pod runs (status patches, final deletion) go through here, with
retries across API-server restarts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import urllib3

from sessionpipe_kubetest.executor import claims
from sessionpipe_kubetest.executor.kubelet import JSON, NODE_NAME, SKIPPED_NAMESPACES, now_rfc3339
from sessionpipe_kubetest.executor.mounts import image_paths
from sessionpipe_kubetest.executor.rest import ApiError, PodGone, Rest
from sessionpipe_kubetest.executor.run import PodProcess, PodRun

T = TypeVar("T")


@dataclass
class _State:
    #: Pods the scheduler cannot place yet (a claim missing or unbound), by uid, and why.
    unschedulable: dict[str, tuple[JSON, str]] = field(default_factory=dict)
    images: dict[str, list[str]] = field(default_factory=dict)
    runs: dict[str, PodRun] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)


class PodExecutor:
    """Runs the pods of the test control plane as local processes (see the module docstring).

    :param server: the API server URL.
    :param ca_cert: the cluster CA (trusted, and handed to pods as ``ca.crt``).
    :param client_cert: admin client certificate; ``client_key`` its key.
    :param workdir: where pod folders, logs and the executor's own log go.
    :param apiserver_port: the port pods reach the API server on (``KUBERNETES_SERVICE_PORT``).
    """

    def __init__(
        self,
        server: str,
        ca_cert: Path,
        client_cert: Path,
        client_key: Path,
        workdir: Path,
        apiserver_port: int,
    ) -> None:
        self.server = server
        self.ca_cert = ca_cert
        self._client_cert = client_cert
        self._client_key = client_key
        self.workdir = workdir
        self.apiserver_port = apiserver_port
        self.python_bin_dir = Path(sys.executable).parent
        self.image_paths = image_paths()
        self.unshare = shutil.which("unshare") or "/usr/bin/unshare"
        self.setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        self.log_file = workdir / "executor.log"
        self.logger = logging.getLogger(f"sessionpipe.tests.executor.{id(self):x}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self._state = _State()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._relist = threading.Event()
        self._thread: threading.Thread | None = None
        self._scheduler: threading.Thread | None = None
        self._rest: Rest | None = None

    @property
    def rest(self) -> Rest:
        if self._rest is None:
            self._rest = Rest(self.server, self.ca_cert, self._client_cert, self._client_key)
        return self._rest

    # -- what tests call --

    def register_image(self, image: str, entrypoint: list[str]) -> None:
        """Give containers of ``image`` (tag and digest ignored) that set no ``command`` an entrypoint."""
        with self._lock:
            self._state.images[_image_name(image)] = list(entrypoint)

    def pod_directory(self, namespace: str, pod: str) -> Path:
        return self.workdir / "pods" / namespace / pod

    def log_path(self, namespace: str, pod: str) -> Path:
        """Where the stdout and stderr of pod ``namespace/pod`` go (appended across restarts)."""
        return self.pod_directory(namespace, pod) / "output.log"

    def processes(self) -> list[PodProcess]:
        """Every pod run so far (running or finished), oldest first."""
        with self._lock:
            runs = list(self._state.runs.values())
        return [run.snapshot() for run in runs]

    def process(self, namespace: str, pod: str) -> PodProcess | None:
        """The latest run of pod ``namespace/pod``, if any."""
        matches = [p for p in self.processes() if p.namespace == namespace and p.name == pod]
        return matches[-1] if matches else None

    # -- used by pod runs --

    def entrypoint_for(self, image: str) -> list[str] | None:
        with self._lock:
            entrypoint = self._state.images.get(_image_name(image))
        return list(entrypoint) if entrypoint else None

    def get_object(self, path: str) -> JSON | None:
        try:
            return self.rest.request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def patch_pod_status(self, namespace: str, name: str, uid: str, patch: JSON) -> None:
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/status"

        def send() -> None:
            self.rest.request("PATCH", path, patch, "application/strategic-merge-patch+json")

        self._retry(send, f"status of {namespace}/{name}")

    def delete_pod_now(self, namespace: str, name: str, uid: str, retry: bool = True) -> None:
        """Remove the pod for good (grace period 0), as the kubelet does once its containers are gone.

        :raise PodGone: the pod with this uid no longer exists.
        """
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        }

        def send() -> None:
            try:
                self.rest.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body)
            except ApiError as error:
                if error.status == 409:  # the uid precondition failed: our pod is gone, another took its name
                    raise PodGone(f"{namespace}/{name}") from error
                raise

        if retry:
            self._retry(send, f"delete {namespace}/{name}")
        else:
            send()

    def finished(self, run: PodRun) -> None:
        with self._lock:
            self._state.finished.add(run.uid)

    def _retry(self, action: Callable[[], T], what: str, timeout: float = 180) -> T:
        """Retry through API-server restarts and conflicts; a 404 means the pod is gone."""
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            try:
                return action()
            except ApiError as error:
                if error.status == 404:
                    raise PodGone(what) from error
                if error.status in (400, 403, 422) or time.monotonic() > deadline:
                    raise
                self.logger.info("%s: %s; retrying", what, error)
            except (urllib3.exceptions.HTTPError, OSError) as error:
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
                self.logger.info("%s: %s; retrying", what, error)
            time.sleep(delay)
            delay = min(delay * 2, 2)

    # -- lifecycle --

    def start(self) -> None:
        """Register the node and start watching pods in a background thread."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(message)s"))
        self.logger.addHandler(handler)
        self._stop.clear()
        self._register_node()
        self._thread = threading.Thread(target=self._watch_forever, name="pod-executor", daemon=True)
        self._thread.start()
        self._scheduler = threading.Thread(target=self._retry_unschedulable, name="pod-scheduler", daemon=True)
        self._scheduler.start()

    def stop(self) -> None:
        """Stop watching and SIGKILL every pod process still running."""
        self._stop.set()
        with self._lock:
            runs = list(self._state.runs.values())
        for run in runs:
            run.kill_now()
        for run in runs:
            run.join(5)
        deadline = time.monotonic() + 5
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            if self._rest is not None:
                self._rest.interrupt_watch()
            self._thread.join(0.1)
        self._thread = None
        if self._scheduler is not None:
            self._scheduler.join(5)
            self._scheduler = None
        if self._rest is not None:
            self._rest.pool.clear()
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)

    def _register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
        }
        try:
            self.rest.request("POST", "/api/v1/nodes", node)
        except ApiError as error:
            if error.status != 409:
                raise
        now = now_rfc3339()
        resources = {"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"}
        status = {
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": NODE_NAME},
                ],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "the test pod executor is running",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
                "nodeInfo": {
                    "kubeletVersion": "v0.0.0-executor",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "local://executor",
                    "kernelVersion": os.uname().release,
                    "osImage": "local",
                    "kubeProxyVersion": "",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
            }
        }
        self.rest.request("PATCH", f"/api/v1/nodes/{NODE_NAME}/status", status, "application/merge-patch+json")

    def _watch_forever(self) -> None:
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None or self._relist.is_set():
                    self._relist.clear()
                    listing = self.rest.request("GET", "/api/v1/pods", timeout=60)
                    for pod in listing.get("items") or []:
                        self._handle("ADDED", pod)
                    resource_version = listing["metadata"]["resourceVersion"]
                query = urllib.parse.urlencode(
                    {
                        "watch": "true",
                        "resourceVersion": resource_version,
                        "allowWatchBookmarks": "true",
                        "timeoutSeconds": "30",
                    }
                )
                for event in self.rest.stream(f"/api/v1/pods?{query}", read_timeout=60):
                    if self._stop.is_set():
                        return
                    if self._relist.is_set():
                        break
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        # 410 Gone: the resource version is too old; list again.
                        resource_version = None
                        break
                    resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
                    if kind != "BOOKMARK":
                        self._handle(str(kind), obj)
            except Exception as error:
                if self._stop.is_set():
                    return
                self.logger.info("watch interrupted (%s); listing again", error)
                # Events may have been missed while the API server was away: list everything again.
                resource_version = None
                self._stop.wait(1)

    def _handle(self, kind: str, pod: JSON) -> None:
        try:
            self._handle_pod(kind, pod)
        except Exception:
            metadata = pod.get("metadata", {})
            self.logger.exception("pod %s/%s: cannot handle %s", metadata.get("namespace"), metadata.get("name"), kind)

    def _handle_pod(self, kind: str, pod: JSON) -> None:
        metadata, spec = pod["metadata"], pod.get("spec") or {}
        namespace, uid = metadata["namespace"], metadata["uid"]
        if namespace in SKIPPED_NAMESPACES:
            return
        with self._lock:
            run = self._state.runs.get(uid)
            done = uid in self._state.finished
        if kind == "DELETED":
            self._forget_unschedulable(uid)
            if run is not None:
                run.kill_now()
            return
        node = spec.get("nodeName")
        phase = (pod.get("status") or {}).get("phase", "Pending")
        deleting = bool(metadata.get("deletionTimestamp"))
        if not node:
            if not deleting and phase == "Pending" and not spec.get("schedulingGates"):
                self._schedule(pod)
            else:
                self._forget_unschedulable(uid)
            return
        self._forget_unschedulable(uid)
        if node != NODE_NAME:
            return
        if run is not None and not done:
            run.observe(pod)
            return
        if done or phase in ("Succeeded", "Failed"):
            if deleting and metadata.get("deletionGracePeriodSeconds") != 0:
                # One attempt only: the watch thread must not block; a failure shows again on relist.
                with contextlib.suppress(PodGone):
                    self.delete_pod_now(namespace, metadata["name"], uid, retry=False)
            return
        new_run = PodRun(self, pod)
        new_run.observe(pod)
        with self._lock:
            self._state.runs[uid] = new_run
        new_run.start()

    def _schedule(self, pod: JSON) -> None:
        """Bind the pod to the node, or, while one of its claims is missing or unbound, keep it
        Pending with the scheduler's ``FailedScheduling`` event and ``PodScheduled=False``."""
        metadata = pod["metadata"]
        namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
        try:
            reason = claims.unschedulable_reason(namespace, pod.get("spec") or {}, self.get_object)
        except (ApiError, urllib3.exceptions.HTTPError, OSError):
            self._relist.set()  # an unbound pod only shows again on a relist
            raise
        if reason is None:
            self._forget_unschedulable(uid)
            self._bind(namespace, name, uid)
            return
        with self._lock:
            previous = self._state.unschedulable.get(uid)
            self._state.unschedulable[uid] = (pod, reason)
        if previous is None or previous[1] != reason:
            self.logger.info("%s/%s: unschedulable: %s", namespace, name, reason)
            self._report_unschedulable(pod, reason)

    def _report_unschedulable(self, pod: JSON, message: str) -> None:
        metadata = pod["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        now = now_rfc3339()
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": now,
        }
        self.rest.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            {"status": {"conditions": [condition]}},
            "application/strategic-merge-patch+json",
        )
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": namespace,
                "name": name,
                "uid": metadata["uid"],
                "resourceVersion": metadata.get("resourceVersion", ""),
            },
            "reason": "FailedScheduling",
            "message": message,
            "type": "Warning",
            "source": {"component": "default-scheduler"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.rest.request("POST", f"/api/v1/namespaces/{namespace}/events", event)

    def _forget_unschedulable(self, uid: str) -> None:
        with self._lock:
            self._state.unschedulable.pop(uid, None)

    def _retry_unschedulable(self) -> None:
        """Try the unschedulable pods again every second: a claim that binds lets its pods go ahead
        (the scheduler moves them back to its active queue on claim and volume events)."""
        while not self._stop.wait(1):
            with self._lock:
                waiting = [pod for pod, _ in self._state.unschedulable.values()]
            for pod in waiting:
                metadata = pod["metadata"]
                try:
                    newest = self.get_object(f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}")
                    if newest is None or newest["metadata"]["uid"] != metadata["uid"]:
                        self._forget_unschedulable(metadata["uid"])
                    elif not (newest.get("spec") or {}).get("nodeName"):
                        self._schedule(newest)
                except Exception as error:
                    self.logger.info("%s/%s: cannot schedule yet (%s)", metadata["namespace"], metadata["name"], error)

    def _bind(self, namespace: str, name: str, uid: str) -> None:
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
        }
        try:
            self.rest.request("POST", f"/api/v1/namespaces/{namespace}/pods/{name}/binding", binding)
            self.logger.info("%s/%s: bound to %s", namespace, name, NODE_NAME)
        except ApiError as error:
            if error.status in (404, 409):
                self._forget_unschedulable(uid)  # gone, or bound already
            else:
                self._relist.set()
                raise
        except (urllib3.exceptions.HTTPError, OSError):
            self._relist.set()  # an unbound pod only shows again on a relist
            raise


def _image_name(image: str) -> str:
    """An image reference without digest and tag: ``repo/name:tag@sha256:…`` → ``repo/name``."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return name
