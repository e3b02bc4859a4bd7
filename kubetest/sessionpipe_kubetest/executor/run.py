"""One pod's life on the executor: start, wait, restart with back-off, terminate, report status.

A :class:`PodRun` thread per pod. It reports ``ContainerCreating`` until :class:`.launch.PodSetup`
can resolve the launch, runs the command in a private mount namespace (see :func:`.mounts.prelude`),
honours ``restartPolicy`` with a back-off capped at 10 s, and on deletion sends SIGTERM, waits the
grace period, sends SIGKILL, and removes the pod for good.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sessionpipe_kubetest.executor.kubelet import (
    DEFAULT_GRACE_SECONDS,
    JSON,
    MAX_TERMINATION_MESSAGE_BYTES,
    OWNED_CONDITIONS,
    SYSTEM_PATH,
    exit_code_of,
    now_rfc3339,
    termination_message,
)
from sessionpipe_kubetest.executor.launch import CannotRun, Launch, NotReadyYet, PodSetup
from sessionpipe_kubetest.executor.mounts import prelude
from sessionpipe_kubetest.executor.rest import PodGone
from sessionpipe_kubetest.images import Bind, Process, image_prelude

if TYPE_CHECKING:
    from sessionpipe_kubetest.executor.loop import PodExecutor


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

    def _prepare_until_ready(self) -> Launch | None:
        reported: tuple[str, str] | None = None
        while not self.deleting.is_set():
            try:
                return PodSetup(self.executor, self.pod, self.container, self.directory).prepare()
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

    def _start(self, launch: Launch) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        script = self.directory / "prelude.sh"
        if launch.image is None:
            script.write_text(prelude(launch.mounts, launch.working_dir))
            process_command = launch.command
            process_env = launch.env
        else:
            script.write_text(self._image_prelude(launch))
            process_command = self._image_launcher(launch)
            process_env = {"PATH": SYSTEM_PATH}  # the launcher passes the container's own environment
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
                    *process_command,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=process_env,
                cwd=self.directory,
                start_new_session=True,
            )
        self._log.info("%s/%s: started pid %d: %s", self.namespace, self.pod_name, self.process.pid, launch.command)

    @staticmethod
    def _image_prelude(launch: Launch) -> str:
        """The mounts of a local image's container: its root, then the pod's volumes inside it."""
        assert launch.image is not None
        binds = [Bind(mount.source, mount.target, mount.read_only) for mount in launch.mounts]
        return image_prelude(launch.image.rootfs, binds, (), launch.image.read_only)

    @staticmethod
    def _image_launcher(launch: Launch) -> list[str]:
        assert launch.image is not None
        root = launch.image
        return Process(launch.command, launch.env, root.uid, root.gid, root.working_dir).launcher()

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

    def _terminated_state(self, exit_code: int, started_at: str, launch: Launch) -> JSON:
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
