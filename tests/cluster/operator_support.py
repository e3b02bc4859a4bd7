"""Helpers for tests of the operator on the real control plane.

:class:`OperatorProcess` runs ``sessionpipe-operator`` exactly as a user runs it outside a cluster:
a separate process with ``KUBECONFIG`` and ``SESSIONPIPE_OPERATOR_*`` settings in its environment,
its log in a file. :class:`JobWatcher` follows every Job of a namespace through a real watch and
remembers the most Jobs of one processor that were ever unfinished at the same moment.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from sessionpipe_contract import API_GROUP, API_VERSION, KIND, LABEL_INSTANCE
from sessionpipe_kubetest import images
from sessionpipe_kubetest.cluster import ControlPlane, free_port
from sessionpipe_kubetest.waiting import wait_for

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"
JOB_SERVICE_ACCOUNT = "sessionpipe-job"
#: The real job image from the local store (``make images``): the operator's Jobs run inside it.
JOB_IMAGE = images.image_tag("job")
#: How long a test waits for the cluster to converge on what it was told (a CronJob to appear, an
#: Event to be posted). Generous on purpose: on a busy two-core machine a step that takes 0.2 s when
#: idle can take many seconds. How fast these steps are is measured in bench/, not asserted here.
CONVERGE_SECONDS = 60.0
#: Images SessionProcessors of these tests may name: the job image's repository, the name the
#: admission tests switch to, and the registry the update tests switch to (the operator refuses any
#: other image with InvalidSpec).
ALLOWED_IMAGES = f"{JOB_IMAGE.rsplit(':', 1)[0]},sessionpipe-job,registry.example/"


def install_crd(control_plane: ControlPlane) -> None:
    """Apply the CRD generated from the operator's models and wait until the API serves it."""
    from sessionpipe_operator.crd import build_crd

    crd = build_crd()
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(crd))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}")


def prepare_namespace(control_plane: ControlPlane, namespace: str) -> None:
    """The job pods' service account, allowed to hold database Leases (what the chart grants)."""
    manifests = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": JOB_SERVICE_ACCOUNT}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "sessionpipe-job"},
            "rules": [
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "create", "update", "patch", "delete"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "sessionpipe-job"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sessionpipe-job"},
            "subjects": [{"kind": "ServiceAccount", "name": JOB_SERVICE_ACCOUNT, "namespace": namespace}],
        },
    ]
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        namespace=namespace,
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
    )


def sessionprocessor(
    name: str, spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": dict(spec),
    }
    if annotations:
        manifest["metadata"]["annotations"] = dict(annotations)
    return manifest


class OperatorProcess:
    """``sessionpipe-operator`` as a subprocess; restartable; logs appended to ``log_path``."""

    def __init__(self, control_plane: ControlPlane, workdir: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.control_plane = control_plane
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "operator.log"
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.extra_env = dict(extra_env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in self.control_plane.env().items() if not k.startswith("SESSIONPIPE_")}
        env.update(
            {
                "SESSIONPIPE_OPERATOR_JOB_IMAGE": JOB_IMAGE,
                "SESSIONPIPE_OPERATOR_JOB_SERVICE_ACCOUNT": JOB_SERVICE_ACCOUNT,
                "SESSIONPIPE_OPERATOR_ALLOWED_IMAGES": ALLOWED_IMAGES,
                "SESSIONPIPE_OPERATOR_HEALTH_PORT": str(self.health_port),
                "SESSIONPIPE_OPERATOR_METRICS_PORT": str(self.metrics_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60) -> None:
        images.build_all()  # the Jobs' image: built once, then only checked (under a second)
        executable = Path(sys.executable).with_name("sessionpipe-operator")
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts + 1} at {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "--", str(executable)],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        wait_for(self._ready, timeout, f"the operator's liveness endpoint (log {self.log_path})", interval=0.2)

    def _ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"the operator exited early; log {self.log_path}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def peak_rss_bytes(self) -> int:
        """The process's high-water resident set size (``VmHWM``)."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
        assert match, "no VmHWM in /proc status"
        return int(match.group(1)) * 1024

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{'name{labels}': value}``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    def metric_sum(self, name: str, **labels: str) -> float:
        total = 0.0
        for key, value in self.metrics().items():
            metric, _, label_text = key.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += value
        return total

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def job_finished(job: Mapping[str, Any]) -> bool:
    """A Job is finished once it carries a true Complete or Failed condition (as kubectl shows it)."""
    return any(
        condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True"
        for condition in (job.get("status") or {}).get("conditions") or []
    )


class JobWatcher:
    """Watches the Jobs of one namespace; records, per processor, the most unfinished Jobs at once."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        self.api = api_client
        self.namespace = namespace
        self.jobs: dict[str, dict[str, Any]] = {}
        self.max_unfinished: dict[str, int] = {}
        self.overlaps: list[tuple[str, list[str]]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"job-watcher-{namespace}", daemon=True)
        self._synced = threading.Event()

    def __enter__(self) -> JobWatcher:
        self._thread.start()
        if not self._synced.wait(20):
            raise AssertionError("the Job watch did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def names(self, instance: str) -> list[str]:
        with self._lock:
            return sorted(
                name
                for name, job in self.jobs.items()
                if (job["metadata"].get("labels") or {}).get(LABEL_INSTANCE) == instance
            )

    def _run(self) -> None:
        resource_version = ""
        while not self._stop.is_set():
            try:
                if not resource_version:
                    listing = self._request({})
                    for job in listing.get("items") or []:
                        self._observe("ADDED", job)
                    resource_version = listing["metadata"]["resourceVersion"]
                    self._synced.set()
                for event in self._stream(resource_version):
                    if event.get("type") == "ERROR":
                        resource_version = ""
                        break
                    obj = event.get("object") or {}
                    resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
                    if event.get("type") != "BOOKMARK":
                        self._observe(str(event.get("type")), obj)
                    if self._stop.is_set():
                        return
            except Exception:
                if self._stop.wait(0.5):
                    return

    def _request(self, query: dict[str, str]) -> dict[str, Any]:
        method, url, headers, _, _ = self.api.param_serialize(
            method="GET",
            resource_path=f"/apis/batch/v1/namespaces/{self.namespace}/jobs",
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, header_params=headers, _request_timeout=30)
        result: dict[str, Any] = json.loads(response.read())
        return result

    def _stream(self, resource_version: str) -> Iterator[dict[str, Any]]:
        query = [("watch", "true"), ("resourceVersion", resource_version), ("allowWatchBookmarks", "true")]
        query.append(("timeoutSeconds", "20"))
        method, url, headers, _, _ = self.api.param_serialize(
            method="GET",
            resource_path=f"/apis/batch/v1/namespaces/{self.namespace}/jobs",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.api.rest_client.pool_manager.request(
            method, url, headers=headers, preload_content=False, timeout=30
        )
        buffer = b""
        try:
            for chunk in response.stream(4096):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            response.release_conn()

    def _observe(self, kind: str, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        with self._lock:
            if kind == "DELETED":
                self.jobs.pop(name, None)
                return
            self.jobs[name] = job
            by_instance: dict[str, list[str]] = {}
            for other_name, other in self.jobs.items():
                instance = (other["metadata"].get("labels") or {}).get(LABEL_INSTANCE)
                if instance and not job_finished(other):
                    by_instance.setdefault(instance, []).append(other_name)
            for instance, unfinished in by_instance.items():
                self.max_unfinished[instance] = max(self.max_unfinished.get(instance, 0), len(unfinished))
                if len(unfinished) > 1:
                    self.overlaps.append((instance, sorted(unfinished)))
