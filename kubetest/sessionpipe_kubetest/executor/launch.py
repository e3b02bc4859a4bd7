"""Turning a pod spec into a launch: the command, the environment and the mounts, as the kubelet would.

Secrets, ConfigMaps and service-account tokens are read from the API server; what is not there yet
raises :class:`NotReadyYet` (the pod waits, as a kubelet's does), what this executor cannot do raises
:class:`CannotRun` (the pod fails).
"""

from __future__ import annotations

import base64
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sessionpipe_kubetest.executor import claims
from sessionpipe_kubetest.executor.kubelet import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    JSON,
    NODE_NAME,
    SERVICE_ACCOUNT_MOUNT,
    SYSTEM_PATH,
    expand,
)
from sessionpipe_kubetest.executor.mounts import Mount
from sessionpipe_kubetest.executor.rest import ApiError
from sessionpipe_kubetest.images import ImageError, ImageNotPresent, ImageRuntime, mounted_rootfs, resolve_user

#: Images under this registry run from buildah's local store (``make images``), inside their own
#: root filesystem; any other image runs on this machine's Python and checkout (the emulation).
LOCAL_REGISTRY = "localhost/"

if TYPE_CHECKING:
    from sessionpipe_kubetest.executor.loop import PodExecutor


class NotReadyYet(Exception):
    """The pod cannot start yet (a missing Secret, an unbound claim, a service account); retried."""

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


@dataclass(frozen=True)
class ImageRoot:
    """How a container of a local image runs: in the image's root, as ``uid``/``gid``."""

    rootfs: Path
    uid: int
    gid: int
    working_dir: str
    read_only: bool


@dataclass
class Launch:
    """Everything needed to start the pod's process: what :meth:`PodSetup.prepare` resolved."""

    command: list[str]
    env: dict[str, str]
    mounts: list[Mount]
    working_dir: str | None
    message_file: Path
    policy: str | None
    #: Set for a local image (:data:`LOCAL_REGISTRY`): the command runs inside its root filesystem.
    image: ImageRoot | None = None


class PodSetup:
    """Resolves one pod's launch against the API server (one attempt; the caller retries).

    :param executor: the executor, for claims, registered images and API access.
    :param pod: the newest version of the pod.
    :param container: the container that runs (the first one).
    :param directory: the pod's host folder (volumes, home, token, termination-message file).
    """

    def __init__(self, executor: PodExecutor, pod: JSON, container: JSON, directory: Path) -> None:
        self.executor = executor
        self.pod = pod
        self.container = container
        self.directory = directory
        self.namespace: str = pod["metadata"]["namespace"]
        self.pod_name: str = pod["metadata"]["name"]
        self.uid: str = pod["metadata"]["uid"]
        self._log: logging.Logger = executor.logger

    def prepare(self) -> Launch:
        spec = self.pod["spec"]
        if spec.get("initContainers"):
            raise CannotRun("CreateContainerConfigError", "the test pod executor does not run init containers")
        if len(spec["containers"]) > 1:
            self._log.warning("%s/%s: only the first container runs", self.namespace, self.pod_name)
        image = self.container.get("image", "")
        runtime = self._local_image(image) if image.startswith(LOCAL_REGISTRY) else None
        env = self._environment(runtime)
        if runtime is None:
            command = [expand(part, env) for part in self._command()]
        else:
            command = [expand(part, env) for part in runtime[1].argv(self.container.get("command"), self._args())]
            if not command:
                raise CannotRun("CreateContainerError", f"image {image!r} has no entrypoint and the pod no command")
        mounts = self._mounts(env)
        if not any(mount.target == SERVICE_ACCOUNT_MOUNT for mount in mounts) and self._automount_token():
            mounts.append(Mount(self._service_account_files(), SERVICE_ACCOUNT_MOUNT, read_only=True))
        message_file = self.directory / "termination-log"
        message_file.parent.mkdir(parents=True, exist_ok=True)
        message_file.write_bytes(b"")
        message_file.chmod(0o666)
        message_target = self.container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
        mounts.append(Mount(message_file, message_target, read_only=False))
        if runtime is not None:
            return Launch(
                command=command,
                env=env,
                mounts=mounts,
                working_dir=None,
                message_file=message_file,
                policy=self.container.get("terminationMessagePolicy"),
                image=self._image_root(*runtime),
            )
        # The "image" is this machine's Python and the repository: bind them back over any volume
        # that would hide them (an emptyDir at /tmp hides a checkout or virtualenv below /tmp).
        mounts += [Mount(path, str(path), read_only=False) for path in self.executor.image_paths]
        return Launch(
            command=command,
            env=env,
            mounts=mounts,
            working_dir=self.container.get("workingDir"),
            message_file=message_file,
            policy=self.container.get("terminationMessagePolicy"),
        )

    def _args(self) -> list[str] | None:
        args = self.container.get("args")
        return None if args is None else list(args)

    def _local_image(self, image: str) -> tuple[Path, ImageRuntime]:
        """The image's root and run configuration; a missing image waits as a kubelet's pull does."""
        try:
            return mounted_rootfs(image)
        except ImageNotPresent as missing:
            raise NotReadyYet("ErrImagePull", f'Failed to pull image "{image}": {missing}') from missing
        except ImageError as error:
            raise CannotRun("CreateContainerError", str(error)) from error

    def _security(self, key: str) -> object:
        """A securityContext field, the container's over the pod's (as the kubelet merges them)."""
        container = self.container.get("securityContext") or {}
        if key in container:
            return container[key]
        return (self.pod["spec"].get("securityContext") or {}).get(key)

    def _image_root(self, rootfs: Path, runtime: ImageRuntime) -> ImageRoot:
        try:
            uid, gid = resolve_user(rootfs, runtime.user)
        except ImageError as error:
            raise CannotRun("CreateContainerConfigError", str(error)) from error
        run_as_user, run_as_group = self._security("runAsUser"), self._security("runAsGroup")
        if isinstance(run_as_user, int):
            uid = run_as_user
        if isinstance(run_as_group, int):
            gid = run_as_group
        if uid == 0 and self._security("runAsNonRoot") is True:
            raise CannotRun("CreateContainerConfigError", "container has runAsNonRoot and image will run as root")
        return ImageRoot(
            rootfs=rootfs,
            uid=uid,
            gid=gid,
            working_dir=self.container.get("workingDir") or runtime.working_dir,
            read_only=self._security("readOnlyRootFilesystem") is True,
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

    def _environment(self, image: tuple[Path, ImageRuntime] | None = None) -> dict[str, str]:
        """The container's environment: the image's ``ENV`` (a local image's; this machine's Python
        and a pod folder as ``HOME`` otherwise), the service variables, then ``envFrom`` and ``env``."""
        if image is None:
            home = self.directory / "home"
            home.mkdir(parents=True, exist_ok=True)
            home.chmod(0o777)
            base = {"PATH": f"{self.executor.python_bin_dir}:{SYSTEM_PATH}", "HOME": str(home)}
        else:
            base = {"PATH": SYSTEM_PATH, **image[1].env}
        env: dict[str, str] = {
            **base,
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
            return self._claim_directory(claim["claimName"]), bool(claim.get("readOnly"))
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

    def _claim_directory(self, claim_name: str) -> Path:
        """The directory of the PV bound to the claim (bound before scheduling; it may have gone since)."""
        what = f"PersistentVolumeClaim {self.namespace}/{claim_name}"
        claim = self.executor.get_object(claims.claim_path(self.namespace, claim_name))
        volume_name = None if claim is None else claims.bound_volume(claim)
        if volume_name is None:
            raise NotReadyYet("ContainerCreating", f"{what} is missing or not bound to a PersistentVolume")
        volume = self.executor.get_object(f"/api/v1/persistentvolumes/{volume_name}")
        if volume is None:
            raise NotReadyYet("ContainerCreating", f"{what}: PersistentVolume {volume_name} not found")
        directory = claims.volume_directory(volume)
        if directory is None:
            raise CannotRun(
                "CreateContainerConfigError",
                f"{what}: PersistentVolume {volume_name} is neither hostPath nor local, which this executor mounts",
            )
        if not directory.is_dir():
            raise NotReadyYet("ContainerCreating", f"{what}: directory {directory} of {volume_name} does not exist")
        return directory

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
