"""The pod's mount namespace: which host paths it needs, and the shell prelude that binds them."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from sessionpipe_kubetest.paths import REPOSITORY


@dataclass(frozen=True)
class Mount:
    """One bind mount of the pod's mount namespace."""

    source: Path
    target: str
    read_only: bool


STAGING = "/run/sessionpipe-executor"


def image_paths() -> list[Path]:
    """What a pod's command needs from the host: the repository (editable install) and the Pythons."""
    candidates = sorted({REPOSITORY, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()})
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
