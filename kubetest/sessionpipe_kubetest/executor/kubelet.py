"""What the kubelet does that needs no cluster: its constants, ``$(VAR)`` expansion, termination messages.

Pure functions; the pod runs in :mod:`.run` and :mod:`.launch` use them, and the package's own tests
check them directly.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any

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
