"""The real images: built from the shipped Dockerfiles with buildah, and run without a container engine.

``python -m sessionpipe_kubetest images`` (``make images``) builds ``Dockerfile.job`` and
``Dockerfile.operator`` into buildah's local store as ``localhost/sessionpipe-job:<version>`` and
``localhost/sessionpipe-operator:<version>``. Only build arguments differ from a plain
``docker build``:

* ``PYTHON_IMAGE``: the Dockerfiles' default Python base when it can be pulled; otherwise a Debian
  bookworm root filesystem with Python 3.11 made by ``mmdebstrap`` from Debian's mirror (the only
  reachable source here), cached under ``~/.cache/sessionpipe/images`` and imported once.
* ``PIP_INSTALL_OPTIONS``: ``--no-index --find-links /wheelhouse``, a wheelhouse the host downloads
  with ``pip download -c constraints.txt`` and binds into the build's RUN steps, so the build is
  hermetic and installs exactly the pinned wheels.

Each image carries a label with the hash of its inputs (Dockerfile, pyproject, constraints, README,
source trees, build arguments): an unchanged tree rebuilds nothing.

:func:`run_in_image` runs a command inside an image the way a container runtime would, with
nothing but util-linux: the image's root filesystem (a mounted buildah working container) bound
read-only in a private mount namespace, a tmpfs ``/tmp``, the caller's volumes bound in, then
``chroot`` and ``setpriv`` to the image's user, in its working directory, with its environment and
its entrypoint/command semantics.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sessionpipe_kubetest.paths import REPOSITORY

#: The image kinds, each built from ``Dockerfile.<kind>`` with the pyproject extra of the same name.
KINDS = ("job", "operator")
#: What the Dockerfiles COPY (the same list as .dockerignore lets through): the build's inputs.
CONTEXT_INPUTS = ("pyproject.toml", "constraints.txt", "README.md", "common", "job_image", "operator")
#: The compiled usage parser's sources: the job image installs its wheel, built on the host
#: (:func:`native_wheel`), so a change to them rebuilds that image.
NATIVE_SOURCES = "native"
#: The fallback base: Debian bookworm's Python 3.11, made by mmdebstrap.
BASE_TAG = "localhost/sessionpipe-base:bookworm-3.11"
BASE_PACKAGES = ("python3.11", "python3-venv", "python-is-python3", "ca-certificates", "passwd")
#: The label that records the hash of an image's inputs.
INPUTS_LABEL = "io.sessionpipe.inputs-hash"
#: The label that records the base (``PYTHON_IMAGE``) an image was built on.
BASE_LABEL = "io.sessionpipe.python-image"
#: Where the wheelhouse is bound during the build's RUN steps.
WHEELHOUSE_IN_BUILD = "/wheelhouse"
#: Where the job image's build finds the compiled usage parser's wheel.
NATIVE_WHEELS_IN_BUILD = "/native-wheels"
_IGNORED_PARTS = ("__pycache__", ".egg-info", ".pyc", ".mypy_cache", ".pytest_cache", "native/target")


class ImageError(RuntimeError):
    """An image could not be built, found or run; the message says which step failed."""


def _log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """``$SESSIONPIPE_CACHE/images`` (default ``~/.cache/sessionpipe/images``)."""
    configured = os.environ.get("SESSIONPIPE_CACHE")
    base = Path(configured) if configured else Path.home() / ".cache" / "sessionpipe"
    return base / "images"


def project_version(repository: Path = REPOSITORY) -> str:
    """The version in pyproject.toml: the images' tag."""
    with (repository / "pyproject.toml").open("rb") as handle:
        version: str = tomllib.load(handle)["project"]["version"]
    return version


def image_tag(kind: str, repository: Path = REPOSITORY) -> str:
    """``localhost/sessionpipe-<kind>:<version>``."""
    return f"localhost/sessionpipe-{kind}:{project_version(repository)}"


def _buildah(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("buildah") is None:
        raise ImageError("buildah is not installed: run scripts/ensure-image-tools.sh (or `make images`)")
    result = subprocess.run(["buildah", *args], capture_output=True, text=True, check=False, timeout=timeout)
    if check and result.returncode != 0:
        raise ImageError(f"buildah {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
    return result


def image_config(tag: str) -> dict[str, object] | None:
    """The OCI config (``User``, ``Env``, ``Entrypoint``, ``Cmd``, ``WorkingDir``, ``Labels``) of a
    local image, or None when the local store does not have it."""
    result = _buildah("inspect", "--type", "image", tag, check=False)
    if result.returncode != 0:
        return None
    config: dict[str, object] = json.loads(result.stdout)["OCIv1"].get("config") or {}
    return config


def _input_files(repository: Path, dockerfile: str) -> list[Path]:
    files = [repository / dockerfile]
    names = (*CONTEXT_INPUTS, NATIVE_SOURCES) if dockerfile == "Dockerfile.job" else CONTEXT_INPUTS
    for name in names:
        path = repository / name
        if path.is_file():
            files.append(path)
            continue
        for found in sorted(path.rglob("*")):
            if found.is_file() and not any(part in str(found.relative_to(repository)) for part in _IGNORED_PARTS):
                files.append(found)
    return files


def inputs_hash(repository: Path, dockerfile: str, build_args: Mapping[str, str]) -> str:
    """SHA-256 over the Dockerfile, the context files it copies (names and contents) and the build
    arguments: the same hash means the same image."""
    digest = hashlib.sha256()
    for path in _input_files(repository, dockerfile):
        digest.update(str(path.relative_to(repository)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(json.dumps(sorted(build_args.items())).encode())
    return digest.hexdigest()


def default_python_image(repository: Path = REPOSITORY) -> str:
    """The Dockerfile's own ``ARG PYTHON_IMAGE`` default (both Dockerfiles use the same)."""
    found = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (repository / "Dockerfile.job").read_text(), re.MULTILINE)
    if not found:
        raise ImageError("Dockerfile.job has no `ARG PYTHON_IMAGE=...` default")
    return found.group(1)


def _base_tarball() -> Path:
    key = "-".join(BASE_PACKAGES)
    return cache_dir() / f"base-bookworm-{hashlib.sha256(key.encode()).hexdigest()[:12]}.tar"


def build_base() -> str:
    """Make (once) the Debian bookworm Python 3.11 root filesystem and import it as :data:`BASE_TAG`."""
    if image_config(BASE_TAG) is not None:
        return BASE_TAG
    tarball = _base_tarball()
    if not tarball.exists():
        if shutil.which("mmdebstrap") is None:
            raise ImageError("mmdebstrap is not installed: run scripts/ensure-image-tools.sh")
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial.tar")
        _log(f"making the Debian bookworm base with mmdebstrap into {tarball}")
        started = time.monotonic()
        command = [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            # No documentation, manuals or translations: a runtime base, like the slim images.
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--aptopt=Acquire::Languages none",
            "bookworm",
            str(partial),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ImageError(f"mmdebstrap failed: {result.stderr.strip()[-2000:]}")
        partial.replace(tarball)
        _log(f"base root filesystem made in {time.monotonic() - started:.0f}s")
    container = _buildah("from", "scratch").stdout.strip()
    try:
        _buildah("add", container, str(tarball), "/")
        _buildah(
            "config",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env",
            "LANG=C.UTF-8",
            "--cmd",
            "python3",
            "--label",
            f"org.opencontainers.image.description=Debian bookworm with {', '.join(BASE_PACKAGES)}",
            container,
        )
        _buildah("commit", "--quiet", container, BASE_TAG)
    finally:
        _buildah("rm", container, check=False)
    _log(f"imported {BASE_TAG}")
    return BASE_TAG


def python_image(repository: Path = REPOSITORY) -> str:
    """The base to build on: ``$SESSIONPIPE_PYTHON_IMAGE``, else the Dockerfile's default when it is
    in the store or can be pulled, else the mmdebstrap base."""
    configured = os.environ.get("SESSIONPIPE_PYTHON_IMAGE")
    if configured:
        return configured
    default = default_python_image(repository)
    if image_config(default) is not None:
        return default
    try:
        pulled = _buildah("pull", "--quiet", default, check=False, timeout=120)
    except subprocess.TimeoutExpired:
        pulled = None
    if pulled is not None and pulled.returncode == 0:
        return default
    _log(f"{default} cannot be pulled; building on the Debian base {BASE_TAG}")
    return build_base()


def _pip_into_folder(folder: Path, what: str, command: Sequence[str], repository: Path, **environment: str) -> bool:
    """Run pip ``command`` (cwd ``repository``) to fill ``folder``, unless an earlier run completed it.

    Returns whether it ran. A run that fails leaves the folder incomplete, to be filled again."""
    done = folder / ".complete"
    if done.exists():
        return False
    folder.mkdir(parents=True, exist_ok=True)
    _log(f"{what} into {folder}")
    full = [sys.executable, "-m", "pip", *command]
    env = {**os.environ, **environment}
    result = subprocess.run(full, cwd=repository, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise ImageError(f"{what} failed: {result.stderr.strip()[-2000:]}")
    done.touch()
    return True


def wheelhouse(repository: Path = REPOSITORY) -> Path:
    """Download (once per constraints/pyproject) every pinned wheel both images install, plus the
    project's build backend, into a folder the build installs from with ``--no-index``."""
    digest = hashlib.sha256()
    for name in ("constraints.txt", "pyproject.toml"):
        digest.update((repository / name).read_bytes())
    folder = cache_dir() / "wheelhouse" / digest.hexdigest()[:16]
    with (repository / "pyproject.toml").open("rb") as handle:
        backend: list[str] = tomllib.load(handle)["build-system"]["requires"]
    requirements = [f".[{kind}]" for kind in KINDS] + backend
    command = ["download", "--quiet", "-c", "constraints.txt", "-d", str(folder), *requirements]
    if _pip_into_folder(folder, "downloading the pinned wheels", command, repository):
        for built in folder.glob("sessionpipe-*"):  # the project itself is built from the context
            built.unlink()
    return folder


def native_wheel(repository: Path = REPOSITORY) -> Path:
    """Build the compiled usage parser's wheel (``native/``, Rust) on the host, once per source tree,
    into a folder the job image's build installs it from.

    The host is Debian bookworm like the images' base, so its ``linux_x86_64`` wheel (abi3,
    CPython >= 3.11) runs there. maturin comes from PyPI (pip's isolated build); cargo's build
    folder is the one ``make .venv/.installed`` uses."""
    digest = hashlib.sha256()
    for path in _input_files(repository, "Dockerfile.job"):
        if path.is_relative_to(repository / NATIVE_SOURCES):
            digest.update(str(path.relative_to(repository)).encode() + b"\0" + path.read_bytes() + b"\0")
    folder = cache_dir() / "native-wheels" / digest.hexdigest()[:16]
    target = Path.home() / ".cache" / "sessionpipe" / "native-target"
    command = ["wheel", "--quiet", "--no-deps", "-w", str(folder), "./native"]
    _pip_into_folder(folder, "building the sessionpipe-native wheel", command, repository, CARGO_TARGET_DIR=str(target))
    return folder


@dataclass(frozen=True)
class Built:
    """One image after :func:`build_image`: its tag, whether it was rebuilt, its size as buildah
    prints it (``640 MB``: the uncompressed size in the store), the build's seconds."""

    tag: str
    rebuilt: bool
    size: str
    seconds: float


def image_size(tag: str) -> str:
    """The image's size in the local store, as buildah prints it."""
    listed = _buildah("images", "--json", tag).stdout
    return str(json.loads(listed)[0]["size"])


def _build_args(kind: str, base: str) -> dict[str, str]:
    if kind != "job":
        return {"PYTHON_IMAGE": base, "PIP_INSTALL_OPTIONS": f"--no-index --find-links {WHEELHOUSE_IN_BUILD}"}
    return {
        "PYTHON_IMAGE": base,
        "PIP_INSTALL_OPTIONS": f"--no-index --find-links {WHEELHOUSE_IN_BUILD} --find-links {NATIVE_WHEELS_IN_BUILD}",
        "NATIVE_REQUIREMENT": "sessionpipe-native",
    }


def _labels(tag: str) -> dict[str, str]:
    config = image_config(tag)
    labels = config.get("Labels") if config else None
    return {str(key): str(value) for key, value in labels.items()} if isinstance(labels, dict) else {}


def up_to_date(kind: str, repository: Path = REPOSITORY) -> bool:
    """True when the store holds the kind's tag and its label matches the hash of today's inputs
    with the base it was built on (read back from the image, so an unchanged tree pulls nothing)."""
    labels = _labels(image_tag(kind, repository))
    base = labels.get(BASE_LABEL)
    if base is None:
        return False
    return labels.get(INPUTS_LABEL) == inputs_hash(repository, f"Dockerfile.{kind}", _build_args(kind, base))


def build_image(kind: str, base: str, wheels: Path, repository: Path = REPOSITORY) -> Built:
    """Build ``Dockerfile.<kind>`` on ``base``, installing from the wheelhouse ``wheels`` (and the
    job image the native wheel, built here when its sources changed)."""
    tag = image_tag(kind, repository)
    dockerfile = f"Dockerfile.{kind}"
    build_args = _build_args(kind, base)
    _log(f"building {tag} from {dockerfile} on {base}")
    started = time.monotonic()
    command = ["buildah", "bud", "--isolation", "chroot", "--pull-never", "--layers=false", "-f", dockerfile]
    command += ["-t", tag, "--volume", f"{wheels}:{WHEELHOUSE_IN_BUILD}:ro"]
    if kind == "job":
        command += ["--volume", f"{native_wheel(repository)}:{NATIVE_WHEELS_IN_BUILD}:ro"]
    for name, value in build_args.items():
        command += ["--build-arg", f"{name}={value}"]
    command += ["--label", f"{INPUTS_LABEL}={inputs_hash(repository, dockerfile, build_args)}"]
    command += ["--label", f"{BASE_LABEL}={base}", str(repository)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageError(f"building {tag} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    _remove_rootfs_containers(tag)  # they hold the replaced image; the next run mounts the new one
    _buildah("rmi", "--prune", check=False)  # the untagged build stage and the replaced image
    return Built(tag, rebuilt=True, size=image_size(tag), seconds=time.monotonic() - started)


def build_all(repository: Path = REPOSITORY) -> list[Built]:
    """Both images, each built only when its inputs changed (the base and wheels only if needed)."""
    built: list[Built] = []
    base: str | None = None
    wheels: Path | None = None
    for kind in KINDS:
        if up_to_date(kind, repository):
            tag = image_tag(kind, repository)
            built.append(Built(tag, rebuilt=False, size=image_size(tag), seconds=0.0))
            continue
        base = base or python_image(repository)
        wheels = wheels or wheelhouse(repository)
        built.append(build_image(kind, base, wheels, repository))
    return built


# -- running a command inside an image, without a container engine --


class ImageNotPresent(ImageError):
    """The local store has no image by that name (a kubelet's ``ErrImagePull``)."""


@dataclass(frozen=True)
class ImageRuntime:
    """What an image says about how to run it (its OCI config)."""

    user: str
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    working_dir: str

    @classmethod
    def of(cls, config: Mapping[str, object]) -> ImageRuntime:
        def strings(key: str) -> list[str]:
            value = config.get(key)
            return [str(item) for item in value] if isinstance(value, list) else []

        env = dict(item.split("=", 1) for item in strings("Env") if "=" in item)
        return cls(
            user=str(config.get("User") or "0"),
            env=env,
            entrypoint=strings("Entrypoint"),
            cmd=strings("Cmd"),
            working_dir=str(config.get("WorkingDir") or "/"),
        )

    def argv(self, command: Sequence[str] | None, args: Sequence[str] | None) -> list[str]:
        """The process to start, by Kubernetes' rules: ``command`` replaces the entrypoint and drops
        the image's CMD; ``args`` replaces the CMD."""
        if command:
            return [*command, *(args or [])]
        return [*self.entrypoint, *(self.cmd if args is None else args)]


def resolve_user(rootfs: Path, user: str) -> tuple[int, int]:
    """``uid[:gid]`` or ``name[:group]`` of the image's USER, looked up in the image's own
    /etc/passwd and /etc/group (a numeric uid without a group takes its passwd entry's group, else 0)."""
    name, _, group = user.partition(":")

    def table(path: str) -> list[list[str]]:
        try:
            lines = (rootfs / path).read_text().splitlines()
        except OSError:
            return []
        return [line.split(":") for line in lines if line.count(":") >= 2]

    passwd = table("etc/passwd")
    if name.isdigit():
        uid = int(name)
        primary = next((int(entry[3]) for entry in passwd if len(entry) > 3 and entry[2] == name), 0)
    else:
        entry = next((entry for entry in passwd if entry[0] == name), None)
        if entry is None or len(entry) < 4:
            raise ImageError(f"the image's user {name!r} is not in its /etc/passwd")
        uid, primary = int(entry[2]), int(entry[3])
    if not group:
        return uid, primary
    if group.isdigit():
        return uid, int(group)
    found = next((int(entry[2]) for entry in table("etc/group") if entry[0] == group), None)
    if found is None:
        raise ImageError(f"the image's group {group!r} is not in its /etc/group")
    return uid, found


def _rootfs_container_prefix(tag: str) -> str:
    return f"sessionpipe-rootfs-{re.sub(r'[^a-zA-Z0-9_.-]', '-', tag.rsplit('/', 1)[-1])}-"


def _remove_rootfs_containers(tag: str) -> None:
    names = _buildah("containers", "--format", "{{.ContainerName}}", check=False).stdout.split()
    for name in names:
        if name.startswith(_rootfs_container_prefix(tag)):
            _buildah("rm", name, check=False)


def mounted_rootfs(tag: str) -> tuple[Path, ImageRuntime]:
    """The image's root filesystem (a buildah working container kept mounted, one per image ID, so
    later runs reuse it) and its run configuration; :class:`ImageNotPresent` when the store lacks it."""
    inspected = _buildah("inspect", "--type", "image", tag, check=False)
    if inspected.returncode != 0:
        raise ImageNotPresent(f"image {tag!r} is not in the local store (build it with `make images`)")
    details = json.loads(inspected.stdout)
    image_id = str(details.get("FromImageID") or details.get("FromImageDigest") or "")[:12]
    runtime = ImageRuntime.of(details["OCIv1"].get("config") or {})
    name = _rootfs_container_prefix(tag) + image_id
    for _attempt in range(3):
        mounted = _buildah("mount", name, check=False)
        if mounted.returncode == 0:
            return Path(mounted.stdout.strip()), runtime
        # Another runner may create the same container at the same moment: then mounting it works.
        _buildah("from", "--pull-never", "--quiet", "--name", name, tag, check=False)
    raise ImageError(f"cannot mount a working container of {tag}: {mounted.stderr.strip()}")


@dataclass(frozen=True)
class Bind:
    """A host path bound into the image's file system."""

    source: Path
    target: str
    read_only: bool = True


#: Where the image's root is assembled, inside the private mount namespace (a tmpfs over the host's
#: /run there, so nothing is left on the host).
ASSEMBLY = "/run/sessionpipe-image"
#: The device nodes a container gets (bound from the host's).
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

# Runs after the mounts, still as root, with the host's Python (nothing needed from the image):
# enter the root, drop to the image's user, change to the working directory, exec with the image's
# environment (PATH lookup uses that environment's PATH, as a runtime does).
_LAUNCHER = """
import json, os, sys
spec = json.loads(sys.argv[1])
os.chroot(spec["root"])
os.chdir("/")
os.setgroups([])
os.setgid(spec["gid"])
os.setuid(spec["uid"])
try:
    os.chdir(spec["workdir"])
except OSError as error:
    sys.exit(f"image runner: cannot enter working directory {spec['workdir']}: {error}")
try:
    os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
except OSError as error:
    sys.exit(f"image runner: cannot run {spec['argv'][0]}: {error}")
"""


def resolve_in_root(rootfs: Path, target: str) -> str:
    """``target`` with the image's symlinks followed inside ``rootfs`` (as a runtime does): Debian's
    ``/var/run -> /run`` must not lead a mount point out of the image onto the host's ``/run``."""
    resolved: list[str] = []
    pending = [part for part in Path(target).parts if part != "/"]
    for _hop in range(256):
        if not pending:
            return "/" + "/".join(resolved)
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = rootfs.joinpath(*resolved, part)
        if candidate.is_symlink():
            link = str(candidate.readlink())
            if link.startswith("/"):
                resolved = []
            pending = [piece for piece in Path(link).parts if piece != "/"] + pending
            continue
        resolved.append(part)
    raise ImageError(f"too many symbolic links under {target} in the image")


def image_prelude(rootfs: Path, binds: Iterable[Bind], tmpfs: Iterable[str], read_only_root: bool) -> str:
    """The shell script (run in a private mount namespace) that assembles the container's file
    system: the image root bound at :data:`ASSEMBLY`, /proc, a /dev of the usual device nodes, tmpfs
    folders, then the binds (parents first); the root and read-only binds are remounted read-only
    after every mount point exists. It then execs its arguments (the launcher)."""
    root = f"{ASSEMBLY}/root"
    lines = [
        "set -u",
        'fail() { echo "image runner: $*" >&2; exit 128; }',
        f"mkdir -p {ASSEMBLY} && mount -t tmpfs sessionpipe-image {ASSEMBLY} || fail cannot make {ASSEMBLY}",
        f"mkdir {root} && mount --bind {shlex.quote(str(rootfs))} {root} || fail cannot bind the image root",
        f"mkdir -p {root}/proc && mount -t proc proc {root}/proc || fail cannot mount /proc",
        f"mkdir -p {root}/dev && mount -t tmpfs -o mode=755 dev {root}/dev || fail cannot mount /dev",
    ]
    for device in DEVICES:
        node = f"{root}/dev/{device}"
        lines.append(f"[ ! -e /dev/{device} ] || {{ : > {node} && mount --bind /dev/{device} {node}; }}")
    mounts: list[tuple[str, Bind | None]] = [(resolve_in_root(rootfs, path), None) for path in tmpfs]
    mounts += [(resolve_in_root(rootfs, bind.target), bind) for bind in binds]
    mounts.sort(key=lambda item: len(Path(item[0]).parts))
    for target, bind in mounts:
        inside = shlex.quote(root + target)
        if bind is None:
            tmp = f"mount -t tmpfs -o mode=1777 tmpfs {inside}"
            lines.append(f"mkdir -p {inside} && {tmp} || fail cannot mount {target}")
        elif bind.source.is_dir():
            lines.append(f"mkdir -p {inside} || fail cannot create mount point {target}")
            lines.append(f"mount --bind {shlex.quote(str(bind.source))} {inside} || fail cannot mount {target}")
        else:
            parent = shlex.quote(root + str(Path(target).parent))
            lines.append(f"mkdir -p {parent} && {{ [ -e {inside} ] || : > {inside}; }} || fail cannot create {target}")
            lines.append(f"mount --bind {shlex.quote(str(bind.source))} {inside} || fail cannot mount {target}")
    if read_only_root:
        lines.append(f"mount -o remount,bind,ro {root} || fail cannot make the root read-only")
    for target, bind in mounts:
        if bind is not None and bind.read_only:
            inside = shlex.quote(root + target)
            lines.append(f"mount -o remount,bind,ro {inside} || fail cannot make {target} read-only")
    lines.append('exec "$@"')
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ImageRun:
    """One process to run in an image, with Kubernetes' container fields."""

    image: str
    command: Sequence[str] | None = None
    args: Sequence[str] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    binds: Sequence[Bind] = ()
    tmpfs: Sequence[str] = ("/tmp",)
    user: str | None = None
    working_dir: str | None = None
    read_only_root: bool = True

    def launch(self) -> list[str]:
        """The host command line: ``unshare`` a mount namespace, assemble the root, launch in it."""
        rootfs, runtime = mounted_rootfs(self.image)
        uid, gid = resolve_user(rootfs, self.user or runtime.user)
        process = Process(
            argv=runtime.argv(self.command, self.args),
            env={**runtime.env, **self.env},
            uid=uid,
            gid=gid,
            working_dir=self.working_dir or runtime.working_dir,
        )
        if not process.argv:
            raise ImageError(f"{self.image} has no entrypoint or command, and none was given")
        script = image_prelude(rootfs, self.binds, self.tmpfs, self.read_only_root)
        unshare = shutil.which("unshare") or "/usr/bin/unshare"
        return [unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh", *process.launcher()]


@dataclass(frozen=True)
class Process:
    """The container's first process, as the launcher starts it inside the assembled root."""

    argv: list[str]
    env: dict[str, str]
    uid: int
    gid: int
    working_dir: str

    def launcher(self) -> list[str]:
        """The command the prelude execs last: the host's Python, which chroots into the assembled
        root, drops to ``uid``/``gid``, enters ``working_dir`` and execs ``argv``."""
        spec = {
            "root": f"{ASSEMBLY}/root",
            "uid": self.uid,
            "gid": self.gid,
            "workdir": self.working_dir,
            "env": self.env,
            "argv": self.argv,
        }
        return [sys.executable, "-I", "-c", _LAUNCHER, json.dumps(spec)]


def run_in_image(run: ImageRun, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``run`` to completion, capturing its output (a text)."""
    return subprocess.run(run.launch(), capture_output=True, text=True, check=False, timeout=timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """``make images``: build what changed, print each image's tag, size and build time."""
    del argv
    started = time.monotonic()
    try:
        built = build_all()
    except ImageError as error:
        print(f"make images: {error}", file=sys.stderr)
        return 1
    for image in built:
        state = f"built in {image.seconds:.0f}s" if image.rebuilt else "up to date"
        print(f"{image.tag}  {image.size}  ({state})")
    print(f"images ready in {time.monotonic() - started:.1f}s")
    return 0
