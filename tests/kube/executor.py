"""A local pod executor: the kubelet's job for the test control plane, done with local processes.

It watches every pod outside ``kube-system``. An unbound pod is bound to the node ``local-executor``
(the executor plays the scheduler too); a pod bound to that node has its first container's
``command`` + ``args`` run as a local process (the image is ignored), and its status is reported the
way a kubelet reports it: Pending/ContainerCreating, Running, then Succeeded/Failed with the exit
code, reason and termination message. Deleting a pod sends SIGTERM, waits the grace period, sends
SIGKILL, reports the terminal phase, and removes the pod for good.

The process sees exactly the paths its pod spec names. It runs in a private mount namespace
(``unshare --mount --propagation private``) where a short shell prelude bind-mounts every volume at its
``mountPath`` (``subPath`` and ``readOnly`` honoured), the termination-message file at
``terminationMessagePath``, and a service-account token at
``/var/run/secrets/kubernetes.io/serviceaccount`` (the API server runs without the ServiceAccount
admission plugin, so the executor does what that plugin and the kubelet would do together). Missing
mount points are created as empty directories or files on the host, as a container runtime creates them
in the image's filesystem. ``securityContext.runAsUser`` is ignored: test volumes are host folders that
belong to the test process.

Volumes: ``persistentVolumeClaim`` (through :meth:`PodExecutor.map_claim`), ``emptyDir``, ``hostPath``,
``configMap``, ``secret``. Env: plain values, ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``,
``envFrom``, and ``$(VAR)`` expansion in env values, command and args as the kubelet does.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import logging
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import urllib3

NODE_NAME = "local-executor"
SKIPPED_NAMESPACES = frozenset({"kube-system"})
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
DEFAULT_GRACE_SECONDS = 30
# The kubelet's limits (pkg/kubelet/container/runtime.go): a termination message file is cut at 4 KiB;
# a message taken from the logs (FallbackToLogsOnError) is at most 80 lines and 2 KiB.
MAX_TERMINATION_MESSAGE_BYTES = 4 * 1024
MAX_FALLBACK_LOG_LINES = 80
MAX_FALLBACK_LOG_BYTES = 2 * 1024
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Conditions this executor owns; others (DisruptionTarget, set by controllers) are left alone.
OWNED_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled")

JSON = dict[str, Any]
T = TypeVar("T")


# -- pure helpers ----------------------------------------------------------------------------------


def expand(value: str, variables: Mapping[str, str]) -> str:
    """Expand ``$(NAME)`` references the way the kubelet does.

    ``$$`` escapes a dollar; a reference to an undefined name, or one with no closing parenthesis, is
    left as written.
    """
    out: list[str] = []
    i = 0
    while i < len(value):
        char = value[i]
        if char != "$" or i + 1 == len(value):
            out.append(char)
            i += 1
            continue
        following = value[i + 1]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "(":
            end = value.find(")", i + 2)
            name = value[i + 2 : end] if end != -1 else None
            if name is not None and name in variables:
                out.append(variables[name])
                i = end + 1
            elif name is not None:
                out.append(value[i : end + 1])
                i = end + 1
            else:
                out.append(value[i:])
                i = len(value)
        else:
            out.append(char)
            i += 1
    return "".join(out)


def termination_message(message_file: bytes, policy: str | None, failed: bool, log_tail: Callable[[], bytes]) -> str:
    """The ``state.terminated.message`` the kubelet reports.

    :param message_file: content of the termination-message file (only the first 4 KiB count).
    :param policy: the container's ``terminationMessagePolicy`` (``File`` when unset).
    :param failed: whether the container exited non-zero.
    :param log_tail: the container's output; read only for ``FallbackToLogsOnError`` failures with an
        empty file, and cut to its last 80 lines and 2 KiB.
    """
    message = message_file[:MAX_TERMINATION_MESSAGE_BYTES]
    if not message and failed and policy == "FallbackToLogsOnError":
        lines = log_tail().splitlines(keepends=True)[-MAX_FALLBACK_LOG_LINES:]
        message = b"".join(lines)[-MAX_FALLBACK_LOG_BYTES:]
    return message.decode("utf-8", errors="replace")


def exit_code_of(returncode: int) -> int:
    """A Popen return code as a container runtime reports it: death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- REST ----------------------------------------------------------------------------------------


class ApiError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, body: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:500]}")
        self.status = status


class Rest:
    """A minimal thread-safe JSON client for the API server, authenticated by a client certificate."""

    def __init__(self, server: str, ca_cert: Path, client_cert: Path, client_key: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca_cert))
        context.load_cert_chain(str(client_cert), str(client_key))
        self.server = server.rstrip("/")
        self.pool = urllib3.PoolManager(ssl_context=context, maxsize=32, retries=False)
        self.watch_response: urllib3.BaseHTTPResponse | None = None

    def request(
        self,
        method: str,
        path: str,
        body: JSON | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> JSON:
        response = self.pool.request(
            method,
            self.server + path,
            body=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": content_type, "Accept": "application/json"},
            timeout=urllib3.Timeout(connect=5, read=timeout),
        )
        text = response.data.decode("utf-8", errors="replace")
        if response.status >= 400:
            raise ApiError(response.status, text, f"{method} {path}")
        return json.loads(text) if text else {}

    def stream(self, path: str, read_timeout: float) -> Iterator[JSON]:
        """Yield the JSON objects of a watch response, one per line."""
        response = self.pool.request(
            "GET",
            self.server + path,
            preload_content=False,
            headers={"Accept": "application/json"},
            timeout=urllib3.Timeout(connect=5, read=read_timeout),
        )
        self.watch_response = response
        try:
            if response.status >= 400:
                raise ApiError(response.status, response.read().decode(errors="replace"), f"watch {path}")
            buffer = b""
            for chunk in response.stream(65536, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            self.watch_response = None
            response.release_conn()

    def interrupt_watch(self) -> None:
        """Unblock a watch that waits for data in another thread."""
        response = self.watch_response
        if isinstance(response, urllib3.HTTPResponse):
            with contextlib.suppress(Exception):
                response.shutdown()


# -- pods ----------------------------------------------------------------------------------------


class NotReadyYet(Exception):
    """The pod cannot start yet (a missing Secret, claim mapping, service account); retried."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class CannotRun(Exception):
    """The pod can never run here (an unsupported feature); it is reported Failed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PodGone(Exception):
    """The pod no longer exists in the API."""


@dataclass(frozen=True)
class Mount:
    """One bind mount of the pod's mount namespace."""

    source: Path
    target: str
    read_only: bool


@dataclass
class PodProcess:
    """What the executor ran (or runs) for one pod; a snapshot for tests to inspect."""

    namespace: str
    name: str
    uid: str
    pid: int | None
    command: list[str]
    log_path: Path
    exit_code: int | None
    restarts: int
    running: bool


@dataclass
class _Launch:
    command: list[str]
    env: dict[str, str]
    mounts: list[Mount]
    working_dir: str | None
    message_file: Path
    policy: str | None


class PodRun(threading.Thread):
    """Runs one pod from bind to termination and reports its status."""

    def __init__(self, executor: PodExecutor, pod: JSON) -> None:
        metadata = pod["metadata"]
        super().__init__(name=f"pod-{metadata['namespace']}/{metadata['name']}", daemon=True)
        self.executor = executor
        self.pod = pod
        self.namespace: str = metadata["namespace"]
        self.pod_name: str = metadata["name"]
        self.uid: str = metadata["uid"]
        self.container: JSON = pod["spec"]["containers"][0]
        self.directory = executor.pod_directory(self.namespace, self.pod_name) / self.uid
        self.log_path = executor.log_path(self.namespace, self.pod_name)
        self.deleting = threading.Event()
        self.killed = threading.Event()
        self.process: subprocess.Popen[bytes] | None = None
        self.command: list[str] = []
        self.exit_code: int | None = None
        self.restarts = 0
        self.start_time = now_rfc3339()
        self._log = executor.logger

    # -- called from the watch thread --

    def observe(self, pod: JSON) -> None:
        """Take the newest version of the pod; a deletion timestamp starts graceful termination."""
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting.set()

    def kill_now(self) -> None:
        """The pod was removed from the API: SIGKILL whatever still runs."""
        self.killed.set()
        self.deleting.set()
        self._kill_group(signal.SIGKILL)

    # -- the pod's life --

    def run(self) -> None:
        try:
            self._run()
        except PodGone:
            self._log.info("%s/%s: gone from the API", self.namespace, self.pod_name)
        except Exception:
            self._log.exception("%s/%s: executor error", self.namespace, self.pod_name)
            with contextlib.suppress(Exception):
                self._report_terminated(128, "ExecutorError", "the test pod executor failed; see executor.log")
        finally:
            self._kill_group(signal.SIGKILL)
            self.executor.finished(self)

    def _run(self) -> None:
        self._report_waiting("ContainerCreating", None)
        launch = self._prepare_until_ready()
        if launch is None:
            self._finalize_deleted()
            return
        policy = self.pod["spec"].get("restartPolicy", "Always")
        backoff = 1.0
        while True:
            started_at = now_rfc3339()
            self._start(launch)
            self._report_running(started_at)
            exit_code = self._wait()
            self.exit_code = exit_code
            restart = not self.deleting.is_set() and (policy == "Always" or (policy == "OnFailure" and exit_code != 0))
            terminated = self._terminated_state(exit_code, started_at, launch)
            if not restart:
                self._report_terminated_state(terminated)
                break
            self.restarts += 1
            self._report_waiting("CrashLoopBackOff", f"back-off {backoff:.0f}s restarting", last_state=terminated)
            if self.deleting.wait(backoff):
                self._report_terminated_state(terminated)
                break
            backoff = min(backoff * 2, 10)
            launch.message_file.write_bytes(b"")
        if self.deleting.is_set():
            self._finalize_deleted()

    def _prepare_until_ready(self) -> _Launch | None:
        reported: tuple[str, str] | None = None
        while not self.deleting.is_set():
            try:
                return self._prepare()
            except NotReadyYet as waiting:
                if reported != (waiting.reason, waiting.message):
                    self._log.info("%s/%s: waiting: %s", self.namespace, self.pod_name, waiting.message)
                    self._report_waiting(waiting.reason, waiting.message)
                    reported = (waiting.reason, waiting.message)
                self.deleting.wait(0.5)
            except CannotRun as failure:
                self._log.warning("%s/%s: cannot run: %s", self.namespace, self.pod_name, failure.message)
                self._report_terminated(128, failure.reason, failure.message)
                self.deleting.wait()
                return None
        return None

    def _start(self, launch: _Launch) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        script = self.directory / "prelude.sh"
        script.write_text(prelude(launch.mounts, launch.working_dir))
        self.command = launch.command
        with self.log_path.open("ab") as log:
            # setpriv --pdeathsig: the pod's process dies with the test session even if it is killed.
            self.process = subprocess.Popen(
                [
                    self.executor.setpriv,
                    "--pdeathsig",
                    "KILL",
                    "--",
                    self.executor.unshare,
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "/bin/sh",
                    str(script),
                    *launch.command,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=launch.env,
                cwd=self.directory,
                start_new_session=True,
            )
        self._log.info("%s/%s: started pid %d: %s", self.namespace, self.pod_name, self.process.pid, launch.command)

    def _wait(self) -> int:
        process = self.process
        assert process is not None
        while process.poll() is None:
            if self.deleting.wait(0.2):
                break
        if process.poll() is None:
            grace = self._grace_seconds()
            self._log.info("%s/%s: deleting: SIGTERM, grace %ss", self.namespace, self.pod_name, grace)
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                self._kill_group(signal.SIGKILL)
                process.wait()
        # A container's processes all die with its first one.
        self._kill_group(signal.SIGKILL)
        return exit_code_of(process.returncode)

    def _grace_seconds(self) -> float:
        metadata_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if metadata_grace is not None:
            return float(metadata_grace)
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))

    def _kill_group(self, sig: signal.Signals) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)

    def _finalize_deleted(self) -> None:
        """As the kubelet does once a deleted pod's containers are gone: remove it for good."""
        if self.killed.is_set():
            return
        with contextlib.suppress(PodGone):
            self.executor.delete_pod_now(self.namespace, self.pod_name, self.uid)

    # -- preparing: env, volumes, command --

    def _prepare(self) -> _Launch:
        spec = self.pod["spec"]
        if spec.get("initContainers"):
            raise CannotRun("CreateContainerConfigError", "the test pod executor does not run init containers")
        if len(spec["containers"]) > 1:
            self._log.warning("%s/%s: only the first container runs", self.namespace, self.pod_name)
        env = self._environment()
        command = [expand(part, env) for part in self._command()]
        mounts = self._mounts(env)
        if not any(mount.target == SERVICE_ACCOUNT_MOUNT for mount in mounts) and self._automount_token():
            mounts.append(Mount(self._service_account_files(), SERVICE_ACCOUNT_MOUNT, read_only=True))
        message_file = self.directory / "termination-log"
        message_file.parent.mkdir(parents=True, exist_ok=True)
        message_file.write_bytes(b"")
        message_file.chmod(0o666)
        message_target = self.container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
        mounts.append(Mount(message_file, message_target, read_only=False))
        # The "image" is this machine's Python and the repository: bind them back over any volume
        # that would hide them (an emptyDir at /tmp hides a checkout or virtualenv below /tmp).
        mounts += [Mount(path, str(path), read_only=False) for path in self.executor.image_paths]
        return _Launch(
            command=command,
            env=env,
            mounts=mounts,
            working_dir=self.container.get("workingDir"),
            message_file=message_file,
            policy=self.container.get("terminationMessagePolicy"),
        )

    def _command(self) -> list[str]:
        command: list[str] = list(self.container.get("command") or [])
        args: list[str] = list(self.container.get("args") or [])
        if not command:
            entrypoint = self.executor.entrypoint_for(self.container.get("image", ""))
            if entrypoint is None:
                raise CannotRun(
                    "CreateContainerError",
                    f"container {self.container['name']!r} has no command and no entrypoint is registered for image "
                    f"{self.container.get('image')!r} (PodExecutor.register_image)",
                )
            command = entrypoint
        return command + args

    def _environment(self) -> dict[str, str]:
        home = self.directory / "home"
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o777)
        env: dict[str, str] = {
            "PATH": f"{self.executor.python_bin_dir}:{SYSTEM_PATH}",
            "HOME": str(home),
            "HOSTNAME": self.pod_name,
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.executor.apiserver_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.executor.apiserver_port),
        }
        for source in self.container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self._config_map(ref["name"], bool(ref.get("optional")))
            elif "secretRef" in source:
                ref = source["secretRef"]
                data = self._secret(ref["name"], bool(ref.get("optional")))
            else:
                raise CannotRun("CreateContainerConfigError", f"unsupported envFrom source {source}")
            env.update({prefix + key: value for key, value in (data or {}).items()})
        for variable in self.container.get("env") or []:
            name = variable["name"]
            if "valueFrom" not in variable:
                env[name] = expand(variable.get("value", ""), env)
                continue
            value = self._value_from(variable["valueFrom"], name)
            if value is not None:
                env[name] = value
        return env

    def _value_from(self, source: JSON, name: str) -> str | None:
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return self._key(self._secret(ref["name"], bool(ref.get("optional"))), ref, "Secret", name)
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return self._key(self._config_map(ref["name"], bool(ref.get("optional"))), ref, "ConfigMap", name)
        if "fieldRef" in source:
            return self._field(source["fieldRef"]["fieldPath"])
        raise CannotRun("CreateContainerConfigError", f"env {name}: unsupported valueFrom {sorted(source)}")

    @staticmethod
    def _key(data: dict[str, str] | None, ref: JSON, kind: str, name: str) -> str | None:
        if data is None:
            return None
        if ref["key"] in data:
            return data[ref["key"]]
        if ref.get("optional"):
            return None
        raise NotReadyYet("CreateContainerConfigError", f"couldn't find key {ref['key']} in {kind} {ref['name']}")

    def _field(self, path: str) -> str:
        metadata, spec = self.pod["metadata"], self.pod["spec"]
        simple = {
            "metadata.name": metadata["name"],
            "metadata.namespace": metadata["namespace"],
            "metadata.uid": metadata["uid"],
            "spec.nodeName": spec.get("nodeName", NODE_NAME),
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
            "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
        }
        if path in simple:
            return str(simple[path])
        for prefix, mapping in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
            if path.startswith(prefix + "['") and path.endswith("']"):
                return str((metadata.get(mapping) or {}).get(path[len(prefix) + 2 : -2], ""))
        raise CannotRun("CreateContainerConfigError", f"unsupported fieldRef {path}")

    def _secret(self, name: str, optional: bool) -> dict[str, str] | None:
        secret = self.executor.get_object(f"/api/v1/namespaces/{self.namespace}/secrets/{name}")
        if secret is None:
            if optional:
                return None
            raise NotReadyYet("CreateContainerConfigError", f'secret "{name}" not found')
        return {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}

    def _secret_bytes(self, name: str, optional: bool) -> dict[str, bytes] | None:
        secret = self.executor.get_object(f"/api/v1/namespaces/{self.namespace}/secrets/{name}")
        if secret is None:
            if optional:
                return None
            raise NotReadyYet("ContainerCreating", f'MountVolume.SetUp failed: secret "{name}" not found')
        return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}

    def _config_map(self, name: str, optional: bool) -> dict[str, str] | None:
        config_map = self.executor.get_object(f"/api/v1/namespaces/{self.namespace}/configmaps/{name}")
        if config_map is None:
            if optional:
                return None
            raise NotReadyYet("CreateContainerConfigError", f'configmap "{name}" not found')
        return dict(config_map.get("data") or {})

    def _mounts(self, env: Mapping[str, str]) -> list[Mount]:
        volumes = {volume["name"]: volume for volume in self.pod["spec"].get("volumes") or []}
        mounts: list[Mount] = []
        for volume_mount in self.container.get("volumeMounts") or []:
            volume = volumes.get(volume_mount["name"])
            if volume is None:
                raise CannotRun("CreateContainerConfigError", f"volume {volume_mount['name']!r} is not defined")
            source, volume_read_only = self._volume_source(volume)
            sub_path = volume_mount.get("subPath") or expand(volume_mount.get("subPathExpr", ""), env)
            if sub_path:
                if Path(sub_path).is_absolute() or ".." in Path(sub_path).parts:
                    raise CannotRun("CreateContainerConfigError", f"invalid subPath {sub_path!r}")
                source = source / sub_path
                if not source.exists():
                    # The kubelet creates a missing subPath as a directory.
                    source.mkdir(parents=True, exist_ok=True)
            read_only = bool(volume_mount.get("readOnly")) or volume_read_only
            mounts.append(Mount(source, volume_mount["mountPath"], read_only))
        return mounts

    def _volume_source(self, volume: JSON) -> tuple[Path, bool]:
        name = volume["name"]
        directory = self.directory / "volumes" / name
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            host_dir = self.executor.claim_directory(self.namespace, claim["claimName"])
            if host_dir is None:
                raise NotReadyYet(
                    "ContainerCreating",
                    f"no host directory is mapped for PersistentVolumeClaim {self.namespace}/{claim['claimName']} "
                    "(PodExecutor.map_claim)",
                )
            return host_dir, bool(claim.get("readOnly"))
        if "emptyDir" in volume:
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o777)
            return directory, False
        if "hostPath" in volume:
            return Path(volume["hostPath"]["path"]), False
        if "configMap" in volume:
            source = volume["configMap"]
            data = self._config_map(source["name"], bool(source.get("optional")))
            if data is None:
                data = {}
            self._write_files(directory, {key: value.encode() for key, value in data.items()}, source)
            return directory, True
        if "secret" in volume:
            source = volume["secret"]
            secret = self._secret_bytes(source["secretName"], bool(source.get("optional")))
            self._write_files(directory, secret or {}, source)
            return directory, True
        kinds = sorted(set(volume) - {"name"})
        raise CannotRun("CreateContainerConfigError", f"volume {name!r}: unsupported volume type {kinds}")

    @staticmethod
    def _write_files(directory: Path, data: Mapping[str, bytes], source: JSON) -> None:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            if item["key"] not in data:
                raise NotReadyYet("ContainerCreating", f"MountVolume.SetUp failed: key {item['key']} not found")
            path = directory / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[item["key"]])
            path.chmod(item.get("mode", source.get("defaultMode", 0o644)))

    def _automount_token(self) -> bool:
        spec = self.pod["spec"]
        if spec.get("automountServiceAccountToken") is not None:
            return bool(spec["automountServiceAccountToken"])
        account = self.executor.get_object(
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{spec.get('serviceAccountName') or 'default'}"
        )
        return account is None or account.get("automountServiceAccountToken") is not False

    def _service_account_files(self) -> Path:
        """Token, CA and namespace, as the kubelet projects them for the pod's service account."""
        named_account = self.pod["spec"].get("serviceAccountName")
        account = named_account or "default"
        token_spec: JSON = {"expirationSeconds": 3607}
        if named_account:
            # The API server binds a token only to a pod that names the same service account; with the
            # ServiceAccount admission plugin off, a pod that names none keeps an empty field.
            token_spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": self.pod_name, "uid": self.uid}
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": token_spec}
        try:
            answer = self.executor.rest.request(
                "POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token", request
            )
        except ApiError as error:
            if error.status == 404:
                raise NotReadyYet("CreateContainerConfigError", f'serviceaccount "{account}" not found') from error
            raise
        directory: Path = self.directory / "serviceaccount"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "token").write_text(answer["status"]["token"])
        shutil.copyfile(self.executor.ca_cert, directory / "ca.crt")
        (directory / "namespace").write_text(self.namespace)
        for path in directory.iterdir():
            path.chmod(0o644)
        return directory

    # -- status --

    def _conditions(self, ready: bool, reason: str | None) -> list[JSON]:
        now = now_rfc3339()
        conditions: list[JSON] = []
        for kind in OWNED_CONDITIONS:
            value = ready if kind in ("ContainersReady", "Ready") else True
            condition: JSON = {"type": kind, "status": "True" if value else "False", "lastTransitionTime": now}
            if not value and reason:
                condition["reason"] = reason
            conditions.append(condition)
        return conditions

    def _container_status(self, state: JSON, ready: bool, last_state: JSON | None = None) -> JSON:
        status: JSON = {
            "name": self.container["name"],
            "image": self.container.get("image", ""),
            "imageID": "",
            "ready": ready,
            "started": "running" in state,
            "restartCount": self.restarts,
            "state": {"waiting": None, "running": None, "terminated": None, **state},
        }
        if self.process is not None:
            status["containerID"] = f"local://{self.uid}-{self.restarts}"
        if last_state is not None:
            status["lastState"] = last_state
        return status

    def _patch_status(self, status: JSON) -> None:
        status.setdefault("hostIP", "127.0.0.1")
        status.setdefault("hostIPs", [{"ip": "127.0.0.1"}])
        status.setdefault("podIP", "127.0.0.1")
        status.setdefault("podIPs", [{"ip": "127.0.0.1"}])
        status.setdefault("startTime", self.start_time)
        self.executor.patch_pod_status(self.namespace, self.pod_name, self.uid, {"status": status})

    def _report_waiting(self, reason: str, message: str | None, last_state: JSON | None = None) -> None:
        waiting: JSON = {"reason": reason}
        if message:
            waiting["message"] = message
        phase = "Running" if self.restarts else "Pending"
        self._patch_status(
            {
                "phase": phase,
                "conditions": self._conditions(False, "ContainersNotReady"),
                "containerStatuses": [self._container_status({"waiting": waiting}, False, last_state)],
            }
        )

    def _report_running(self, started_at: str) -> None:
        self._patch_status(
            {
                "phase": "Running",
                "conditions": self._conditions(True, None),
                "containerStatuses": [self._container_status({"running": {"startedAt": started_at}}, True)],
            }
        )

    def _terminated_state(self, exit_code: int, started_at: str, launch: _Launch) -> JSON:
        message = termination_message(
            launch.message_file.read_bytes()[: MAX_TERMINATION_MESSAGE_BYTES + 1],
            launch.policy,
            exit_code != 0,
            self._log_tail,
        )
        terminated: JSON = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": started_at,
            "finishedAt": now_rfc3339(),
            "containerID": f"local://{self.uid}-{self.restarts}",
        }
        if message:
            terminated["message"] = message
        return {"terminated": terminated}

    def _log_tail(self) -> bytes:
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                return log.read()
        except OSError:
            return b""

    def _report_terminated(self, exit_code: int, reason: str, message: str) -> None:
        now = now_rfc3339()
        self.exit_code = exit_code
        state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "message": message,
                "startedAt": now,
                "finishedAt": now,
            }
        }
        self._report_terminated_state(state)

    def _report_terminated_state(self, state: JSON) -> None:
        phase = "Succeeded" if state["terminated"]["exitCode"] == 0 else "Failed"
        self._patch_status(
            {
                "phase": phase,
                "conditions": self._conditions(False, "PodCompleted"),
                "containerStatuses": [self._container_status(state, False)],
            }
        )
        self._log.info("%s/%s: %s, exit code %s", self.namespace, self.pod_name, phase, state["terminated"]["exitCode"])

    def snapshot(self) -> PodProcess:
        process = self.process
        return PodProcess(
            namespace=self.namespace,
            name=self.pod_name,
            uid=self.uid,
            pid=process.pid if process is not None else None,
            command=list(self.command),
            log_path=self.log_path,
            exit_code=self.exit_code,
            restarts=self.restarts,
            running=process is not None and process.poll() is None,
        )


STAGING = "/run/sessionpipe-executor"


def image_paths() -> list[Path]:
    """What a pod's command needs from the host: the repository (editable install) and the Pythons."""
    repository = Path(__file__).resolve().parents[2]
    candidates = sorted({repository, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()})
    return [path for path in candidates if not any(other in path.parents for other in candidates)]


def prelude(mounts: list[Mount], working_dir: str | None) -> str:
    """The shell script that builds the pod's mounts inside its private mount namespace, then execs.

    Every source is first bound into a staging tmpfs private to the namespace, so that a volume
    mounted over a host folder (an emptyDir at ``/tmp``, say) cannot hide the source of a later
    mount. Mounts are then bound parents first (fewer path components first); read-only remounts
    come after every bind, so a read-only volume can still hold the mount point of another volume.
    """
    lines = [
        "set -u",
        'fail() { echo "pod executor: $*" >&2; exit 128; }',
        f"mkdir -p {STAGING} && mount -t tmpfs sessionpipe-executor {STAGING} || fail cannot stage mounts",
    ]
    ordered = sorted(mounts, key=lambda mount: len(Path(mount.target).parts))
    for number, mount in enumerate(ordered):
        source = shlex.quote(str(mount.source))
        staged = f"{STAGING}/{number}"
        make = "mkdir" if mount.source.is_dir() else ":>"
        lines.append(f"{make} {staged} && mount --bind {source} {staged} || fail cannot stage {source}")
    for number, mount in enumerate(ordered):
        target = shlex.quote(mount.target)
        if mount.source.is_dir():
            lines.append(f"mkdir -p {target} || fail cannot create mount point {target}")
        else:
            parent = shlex.quote(str(Path(mount.target).parent))
            lines.append(f"mkdir -p {parent} || fail cannot create {parent}")
            lines.append(f"[ -e {target} ] || : > {target} || fail cannot create mount point {target}")
        lines.append(f"mount --bind {STAGING}/{number} {target} || fail cannot mount {target}")
    for mount in ordered:
        if mount.read_only:
            target = shlex.quote(mount.target)
            lines.append(f"mount -o remount,bind,ro {target} || fail cannot make {target} read-only")
    if working_dir:
        directory = shlex.quote(working_dir)
        lines.append(f"mkdir -p {directory} && cd {directory} || fail cannot enter working directory {directory}")
    lines.append('exec "$@"')
    return "\n".join(lines) + "\n"


# -- the executor ----------------------------------------------------------------------------------


@dataclass
class _State:
    claims: dict[tuple[str, str], Path] = field(default_factory=dict)
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
        self._rest: Rest | None = None

    @property
    def rest(self) -> Rest:
        if self._rest is None:
            self._rest = Rest(self.server, self.ca_cert, self._client_cert, self._client_key)
        return self._rest

    # -- what tests call --

    def map_claim(self, namespace: str, claim_name: str, host_dir: Path) -> None:
        """Make PersistentVolumeClaim ``namespace/claim_name`` mount ``host_dir`` (the PVC need not exist)."""
        with self._lock:
            self._state.claims[(namespace, claim_name)] = Path(host_dir).resolve()

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

    def claim_directory(self, namespace: str, claim_name: str) -> Path | None:
        with self._lock:
            return self._state.claims.get((namespace, claim_name))

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
            if run is not None:
                run.kill_now()
            return
        node = spec.get("nodeName")
        phase = (pod.get("status") or {}).get("phase", "Pending")
        deleting = bool(metadata.get("deletionTimestamp"))
        if not node:
            if not deleting and phase == "Pending" and not spec.get("schedulingGates"):
                self._bind(namespace, metadata["name"], uid)
            return
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
            if error.status not in (404, 409):
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
