"""A real, local Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager.

The binaries come from :mod:`sessionpipe_kubetest.build` (compiled from Go modules, cached outside
the repository). Every process listens on a free port of 127.0.0.1, logs into the control plane's work
folder, and dies with the Python process that started it (``setpriv --pdeathsig``), so an aborted test
run leaves nothing behind. A :class:`~sessionpipe_kubetest.executor.PodExecutor` stands in for the
kubelet. ``python -m sessionpipe_kubetest up`` runs one that outlives the command (:mod:`.__main__`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from sessionpipe_kubetest import pki as pki_module
from sessionpipe_kubetest.build import Toolset, toolset
from sessionpipe_kubetest.executor import PodExecutor
from sessionpipe_kubetest.waiting import wait_for

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# What docs/testing.md ("The control plane") describes, plus the service-account controller so that every
# namespace gets its `default` ServiceAccount (the pod executor requests pod tokens for it), and the
# Deployment and ReplicaSet controllers so that a Helm release's operator Deployment gets its pod, and
# the PersistentVolume binder (with the two protection controllers, which remove the finalizers the
# API server's StorageObjectInUseProtection admission puts on every PV and PVC) so that claims bind
# to the PVs of sessionpipe_kubetest.volumes.
CONTROLLERS = (
    "job-controller",
    "cronjob-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "ttl-after-finished-controller",
    "pod-garbage-collector-controller",
    "serviceaccount-controller",
    "deployment-controller",
    "replicaset-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
)
MISSING_BINARIES_HINT = (
    "the control-plane binaries are not built: run `make controlplane` (python -m sessionpipe_kubetest build)"
)


class ControlPlaneError(RuntimeError):
    """A control-plane process failed to start or to become ready; the message points at its log."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; unlike its base class, the message carries kubectl's stderr."""

    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd))} exited {self.returncode}: {(self.stderr or self.stdout or '').strip()}"


class KubeconfigKubectl:
    """kubectl with one kubeconfig; also for a cluster this process did not start (``up``)."""

    def __init__(self, kubectl_binary: Path, kubeconfig: Path) -> None:
        self.kubectl_binary = kubectl_binary
        self.kubeconfig = kubeconfig

    def kubectl(
        self,
        *args: str,
        namespace: str | None = None,
        input: str | None = None,
        check: bool = True,
        as_user: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (impersonating ``as_user`` if given); raise :class:`KubectlError` if it fails
        and ``check`` is true."""
        command = [str(self.kubectl_binary), f"--kubeconfig={self.kubeconfig}"]
        if namespace:
            command.append(f"--namespace={namespace}")
        if as_user:
            command.append(f"--as={as_user}")
        command += args
        result = subprocess.run(command, input=input, capture_output=True, text=True, check=False, timeout=120)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, command, result.stdout, result.stderr)
        return result


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ManagedProcess:
    """One long-running control-plane binary, its command line and its log file."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        # setpriv --pdeathsig: the binary is killed when the Python process that started it dies, even
        # by SIGKILL, so a crashed test run never leaves an API server behind.
        self.process = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "--", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} exited with {self.process.returncode}; log {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def stop(self, grace_seconds: float = 0) -> None:
        """SIGTERM and up to ``grace_seconds`` to exit, then SIGKILL. The default kills at once: these are
        throw-away test processes, and kube-apiserver's graceful shutdown alone takes many seconds."""
        if self.process is not None and self.process.poll() is None:
            if grace_seconds > 0:
                self.process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(grace_seconds)
            self.process.kill()
            self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None


class ControlPlane:
    """etcd + kube-apiserver (RBAC on) + kube-controller-manager + a pod executor, on 127.0.0.1.

    Use :meth:`start` and :meth:`stop` (or ``with``). After start: :attr:`kubeconfig` is an admin
    kubeconfig, :attr:`server` the API server's URL, :attr:`executor` the running pod executor.
    """

    def __init__(self, workdir: Path, tools: Toolset | None = None) -> None:
        self.tools = tools or toolset()
        self.bin_dir = self.tools.bin_dir
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = pki_module.Pki(workdir / "pki")
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.executor = PodExecutor(
            self.server, self.pki.ca_cert, self.pki.admin_cert, self.pki.admin_key, workdir / "executor", self.port
        )
        #: Run the real kubectl as admin (``as_user`` impersonates); a failure raises :class:`KubectlError`
        #: unless ``check=False``.
        self.kubectl = KubeconfigKubectl(self.tools.path("kubectl"), self.kubeconfig).kubectl
        self.startup_seconds: float | None = None
        self._etcd: ManagedProcess | None = None
        self._apiserver: ManagedProcess | None = None
        self._controller_manager: ManagedProcess | None = None
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        """Start every component and wait until each is ready; raise :class:`ControlPlaneError` if not."""
        if not self.tools.complete:
            raise ControlPlaneError(f"{MISSING_BINARIES_HINT}; looked in {self.bin_dir}")
        started = time.monotonic()
        try:
            pki_module.generate(self.pki.directory)
            self.write_kubeconfig(
                self.kubeconfig,
                user={
                    "client-certificate-data": _b64(self.pki.admin_cert.read_bytes()),
                    "client-key-data": _b64(self.pki.admin_key.read_bytes()),
                },
                user_name="admin",
            )
            self._start_etcd()
            self.start_apiserver()
            self._start_controller_manager()
            self.executor.start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop the executor (killing its pods' processes) and every component; idempotent."""
        self.executor.stop()
        for component in (self._controller_manager, self._apiserver, self._etcd):
            if component is not None:
                component.stop()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _start_etcd(self) -> None:
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._etcd = ManagedProcess(
            "etcd",
            [
                str(self.tools.path("etcd")),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            self.workdir / "etcd.log",
        )
        self._etcd.start()
        etcd = self._etcd

        def healthy() -> bool:
            etcd.check_alive()
            try:
                with urllib.request.urlopen(f"{client_url}/health", timeout=2) as response:
                    return bool(json.loads(response.read()).get("health") == "true")
            except (OSError, ValueError):
                return False

        wait_for(healthy, 60, "etcd to report healthy")

    def start_apiserver(self) -> None:
        """Start kube-apiserver (again) on the same port and etcd, and wait until it is ready.

        Tests call this after :meth:`stop_apiserver` to bring the API back; clients reconnect.
        """
        with self._lock:
            if self._apiserver is not None and self._apiserver.running:
                return
            pki = self.pki
            self._apiserver = ManagedProcess(
                "kube-apiserver",
                [
                    str(self.tools.path("kube-apiserver")),
                    f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={self.port}",
                    f"--cert-dir={self.workdir / 'apiserver-certs'}",
                    f"--tls-cert-file={pki.serving_cert}",
                    f"--tls-private-key-file={pki.serving_key}",
                    f"--client-ca-file={pki.ca_cert}",
                    f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                    f"--service-account-key-file={pki.service_account_public_key}",
                    f"--service-account-signing-key-file={pki.service_account_key}",
                    f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                    "--authorization-mode=RBAC",
                    # No kubelet projects tokens into pods here; the pod executor mounts one itself.
                    "--disable-admission-plugins=ServiceAccount",
                    "--enable-priority-and-fairness=false",
                    "--allow-privileged=true",
                    "--profiling=false",
                    "--v=1",
                ],
                self.workdir / "kube-apiserver.log",
            )
            self._apiserver.start()
            apiserver = self._apiserver
            context = self.ssl_context()

            def ready() -> bool:
                apiserver.check_alive()
                try:
                    with urllib.request.urlopen(f"{self.server}/readyz", timeout=5, context=context) as response:
                        if response.read().strip() != b"ok":
                            return False
                    # The system namespaces are created by a post-start hook that /readyz does not wait for.
                    with urllib.request.urlopen(
                        f"{self.server}/api/v1/namespaces/default", timeout=5, context=context
                    ) as response:
                        return bool(response.status == 200)
                except (OSError, urllib.error.HTTPError):
                    return False

            wait_for(ready, 120, "kube-apiserver /readyz", interval=0.2)

    def stop_apiserver(self) -> None:
        """Kill kube-apiserver (as a crashed or unreachable API server); etcd and the controller manager
        keep running, and :meth:`start_apiserver` brings it back on the same port."""
        with self._lock:
            if self._apiserver is not None:
                self._apiserver.stop()

    def _start_controller_manager(self) -> None:
        self._controller_manager = ManagedProcess(
            "kube-controller-manager",
            [
                str(self.tools.path("kube-controller-manager")),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                f"--controllers={','.join(CONTROLLERS)}",
                "--concurrent-job-syncs=5",
                # The binder syncs a claim at once when it is created; a PV made for a claim that
                # already waits is found on the next periodic sync (15 s by default).
                "--pvclaimbinder-sync-period=2s",
                "--v=1",
            ],
            self.workdir / "kube-controller-manager.log",
        )
        self._controller_manager.start()
        manager = self._controller_manager

        def default_service_account() -> bool:
            # The service-account controller creating default/default shows its informers have synced.
            manager.check_alive()
            return self._get_ok("/api/v1/namespaces/default/serviceaccounts/default")

        wait_for(default_service_account, 60, "kube-controller-manager to create the default ServiceAccount")

    # -- clients -----------------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """TLS context trusting the test CA and presenting the admin client certificate."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def _get_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.server}{path}", timeout=5, context=self.ssl_context()) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def write_kubeconfig(self, path: Path, user: dict[str, str], user_name: str, namespace: str | None = None) -> Path:
        """Write a self-contained kubeconfig (CA embedded) for this API server and ``user``."""
        context: dict[str, str] = {"cluster": "sessionpipe-test", "user": user_name}
        if namespace:
            context["namespace"] = namespace
        config: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "sessionpipe-test",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": _b64(self.pki.ca_cert.read_bytes()),
                    },
                }
            ],
            "users": [{"name": user_name, "user": user}],
            "contexts": [{"name": user_name, "context": context}],
            "current-context": user_name,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(config, indent=2))
        temporary.chmod(0o600)
        temporary.replace(path)
        return path

    def env(self) -> dict[str, str]:
        """``os.environ`` plus ``KUBECONFIG`` (admin) and ``PATH`` with the control-plane binaries first."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", "")])
        return env

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A token for ``namespace/name`` from the TokenRequest API (the service account must exist)."""
        result = self.kubectl("create", "token", name, f"--duration={seconds}s", namespace=namespace)
        return result.stdout.strip()

    def service_account_kubeconfig(self, namespace: str, name: str) -> Path:
        """A kubeconfig that authenticates as the service account ``namespace/name`` with a fresh token."""
        token = self.service_account_token(namespace, name)
        path = self.workdir / "service-accounts" / f"{namespace}.{name}.kubeconfig"
        return self.write_kubeconfig(path, {"token": token}, f"{namespace}-{name}", namespace=namespace)

    def logs(self) -> dict[str, Path]:
        """The log file of every component, by name."""
        return {
            "etcd": self.workdir / "etcd.log",
            "kube-apiserver": self.workdir / "kube-apiserver.log",
            "kube-controller-manager": self.workdir / "kube-controller-manager.log",
            "executor": self.executor.log_file,
        }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
