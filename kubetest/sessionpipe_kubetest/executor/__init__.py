"""A local pod executor: the kubelet's job for the test control plane, done with local processes.

It watches every pod outside ``kube-system``. An unbound pod is bound to the node ``local-executor``
(the executor plays the scheduler too) once its claims are bound to PersistentVolumes; until then it
stays Pending with a ``FailedScheduling`` event (:mod:`.claims`); a pod bound to that node has its first container's
``command`` + ``args`` run as a local process (on this machine's Python, the image only selecting a
registered entry point; an image under ``localhost/`` runs inside its root filesystem from buildah's
local store instead, see :mod:`sessionpipe_kubetest.images`), and its status is reported the
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

Volumes: ``persistentVolumeClaim`` (the directory of its bound ``hostPath`` or ``local`` PV),
``emptyDir``, ``hostPath``, ``configMap``, ``secret``. Env: plain values, ``secretKeyRef``,
``configMapKeyRef``, ``fieldRef``, ``envFrom``, and ``$(VAR)`` expansion in env values, command and
args as the kubelet does.

The modules: :mod:`.loop` (the :class:`PodExecutor`: node, watch, binding, API calls with retries),
:mod:`.claims` (claims and their PVs), :mod:`.run` (one pod's life and status), :mod:`.launch`
(command, environment, volumes), :mod:`.mounts` (the mount namespace's prelude), :mod:`.kubelet`
(pure rules and limits), :mod:`.rest` (the API client).
"""

from sessionpipe_kubetest.executor.kubelet import exit_code_of, expand, termination_message
from sessionpipe_kubetest.executor.loop import PodExecutor
from sessionpipe_kubetest.executor.mounts import Mount, image_paths, prelude
from sessionpipe_kubetest.executor.run import PodProcess

__all__ = [
    "Mount",
    "PodExecutor",
    "PodProcess",
    "exit_code_of",
    "expand",
    "image_paths",
    "prelude",
    "termination_message",
]
