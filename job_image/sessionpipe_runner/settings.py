"""Settings: every value a command uses, resolved once from its flag, environment and default.

A flag beats its ``SESSIONPIPE_*`` environment variable, which beats the default. The result is a
typed, frozen object (:class:`RunSettings`, :class:`LeaseSettings`); a bad value is a
:class:`UsageError` explained in one line.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sessionpipe_contract import (
    DEFAULT_DB_MEMORY,
    DEFAULT_LEASE_DURATION_SECONDS,
    DEFAULT_LEASE_WAIT_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TERMINATION_LOG,
    ENV_CONFIG,
    ENV_DB,
    ENV_DB_MEMORY,
    ENV_LEASE,
    ENV_LEASE_DURATION,
    ENV_LEASE_NAMESPACE,
    ENV_LEASE_WAIT,
    ENV_MAX_ATTEMPTS,
    ENV_MAX_SESSIONS,
    ENV_PROCESSOR,
    ENV_SESSIONS,
    ENV_TERMINATION_LOG,
    ENV_USER,
    ENV_WORKERS,
)

LEASE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
MIN_LEASE_DURATION_SECONDS = 3
#: How long ``reset`` and ``forget`` wait for the database's lease by default.
MAINTENANCE_LEASE_WAIT_SECONDS = 10.0
#: Claude Code's config folders, comma-separated, as ccusage reads them (each has a ``projects/``).
ENV_CLAUDE_CONFIG_DIR = "CLAUDE_CONFIG_DIR"

DEFAULT_DATABASE = Path("sessionpipe.duckdb")
CLAUDE_PROJECTS = Path("~/.claude/projects")

T = TypeVar("T")


class UsageError(Exception):
    """A mistake in the command line or settings, explained in one line."""


@dataclass(frozen=True)
class RunSettings:
    """Everything one run needs, already resolved from flags, environment and defaults."""

    processor: str
    sessions: Path
    database: Path
    #: Further sessions roots read in the same run (``--sessions`` given more than once, or the
    #: default's several Claude folders); keys stay unique as :func:`~sessionpipe_runner.scan.scan_roots` says.
    more_sessions: tuple[Path, ...] = ()
    user: str | None = None
    lease_wait_seconds: float = 600.0
    max_sessions: int = 0  # 0: no cap
    max_attempts: int = 3
    config: Mapping[str, Any] = field(default_factory=dict)
    termination_log: Path | None = None
    environ: Mapping[str, str] = field(default_factory=dict)
    workers: int = 0  # workers: 0 lets the runner choose, 1 processes in the runner itself
    db_memory: str = DEFAULT_DB_MEMORY  # DuckDB's memory_limit for this run's connection

    @property
    def session_roots(self) -> tuple[Path, ...]:
        """Every sessions root of the run, in the order given."""
        return (self.sessions, *self.more_sessions)


@dataclass(frozen=True)
class LeaseSettings:
    """Which single-writer lease a run takes: ``file`` beside the database, or a Kubernetes Lease."""

    spec: str = "file"  # "file" or "k8s:NAME"
    namespace: str | None = None  # of a k8s: lease; None: the pod's or the kubeconfig's
    duration_seconds: int = DEFAULT_LEASE_DURATION_SECONDS

    @property
    def kubernetes_name(self) -> str | None:
        """The Lease object's name, or ``None`` for the file lease."""
        return self.spec.removeprefix("k8s:") if self.spec.startswith("k8s:") else None


# --- parsing one value ----------------------------------------------------------------------------
def resolve(flag: T | None, env_name: str, default: T, parse: Callable[[str], T], environ: Mapping[str, str]) -> T:
    """A flag beats its environment variable, which beats the default."""
    if flag is not None:
        return flag
    raw = environ.get(env_name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as error:
        raise UsageError(f"{env_name}={raw!r} is not valid: {error}") from None


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


MEMORY_SIZE = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)


def memory_size(text: str) -> str:
    """A size as DuckDB reads one (``256MB``, ``1.5GiB``), checked here so a typo is a usage error."""
    text = text.strip()
    if not MEMORY_SIZE.fullmatch(text):
        raise ValueError("must be a size such as 256MB or 1GiB")
    return text


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def arg_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse ``type``: its ValueError becomes argparse's one-line error."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None

    convert.__name__ = parse.__name__
    return convert


def parse_config(text: str) -> dict[str, Any]:
    """Processor settings: a JSON object, inline or ``@path/to/file.json``."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as error:
            raise ValueError(f"cannot read {text[1:]}: {error.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


# --- paths ----------------------------------------------------------------------------------------
def claude_projects_dirs(environ: Mapping[str, str]) -> list[Path]:
    """The Claude Code ``projects`` folders that exist here, where ccusage looks for them.

    ``CLAUDE_CONFIG_DIR`` (a comma-separated list of Claude config folders) names them; without it,
    ``$XDG_CONFIG_HOME/claude`` (``~/.config/claude``, the newer default) and
    ``~/.claude`` (before), each with ``projects/`` below.
    """
    configured = [part.strip() for part in environ.get(ENV_CLAUDE_CONFIG_DIR, "").split(",") if part.strip()]
    if configured:
        candidates = [Path(folder).expanduser() / "projects" for folder in configured]
    else:
        config_home = Path(environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser()
        candidates = [config_home / "claude" / "projects", CLAUDE_PROJECTS.expanduser()]
    return [folder for folder in dict.fromkeys(candidates) if folder.is_dir()]


def default_sessions(environ: Mapping[str, str]) -> tuple[list[Path], str | None]:
    """The embedded default: this laptop user's Claude projects folders, read as that one user's sessions."""
    found = claude_projects_dirs(environ)
    if found:
        return found, environ.get("USER") or getpass.getuser()
    if environ.get(ENV_CLAUDE_CONFIG_DIR):
        where = f"no projects/ folder in {ENV_CLAUDE_CONFIG_DIR}={environ[ENV_CLAUDE_CONFIG_DIR]!r}"
    else:
        where = f"neither ~/.config/claude/projects nor {CLAUDE_PROJECTS} exists"
    raise UsageError(f"no sessions directory: {where}; pass --sessions DIR or set {ENV_SESSIONS}")


def database_path(flag: Path | None, environ: Mapping[str, str], *, writing: bool) -> Path:
    """The database a command uses (``--db``, ``SESSIONPIPE_DB`` or the default), refusing the files beside it.

    The lease file is never a database (opening it as one would turn it into one), and the
    snapshot is the read-only copy a writer replaces after each run: writing to it would be lost.
    """
    database = resolve(flag, ENV_DB, DEFAULT_DATABASE, Path, environ)
    if database.name.endswith(".lease"):
        raise UsageError(f"--db {database} is a lease file, not a database; pass the database it guards")
    if writing and database.stem.endswith(".snapshot"):
        raise UsageError(
            f"--db {database} is a read-only snapshot that the next run replaces; pass the database it was copied from"
        )
    return database


# --- whole settings -------------------------------------------------------------------------------
def run_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> RunSettings:
    """The settings of ``sessionpipe run``, from its flags, the environment and defaults."""
    processor = resolve(args.processor, ENV_PROCESSOR, "", str, environ)
    if not processor:
        raise UsageError(f"which processor? pass --processor NAME or set {ENV_PROCESSOR}")
    given: list[Path] | None = resolve(args.sessions or None, ENV_SESSIONS, None, lambda text: [Path(text)], environ)
    user = resolve(args.user, ENV_USER, None, str, environ)
    if given is None:
        roots, default_user = default_sessions(environ)
        user = user or default_user
    else:
        roots = list(dict.fromkeys(given))
    for root in roots:
        if not root.is_dir():
            raise UsageError(f"sessions directory {root} does not exist or is not a directory")
    if user is not None and (not user or "/" in user or user in {".", ".."}):
        raise UsageError(f"--user {user!r} is not a valid user name")
    lease_spec(args, environ)  # a bad --lease is a mistake before anything else is done
    return RunSettings(
        processor=processor,
        sessions=roots[0],
        more_sessions=tuple(roots[1:]),
        user=user,
        database=database_path(args.db, environ, writing=True),
        lease_wait_seconds=resolve(
            args.lease_wait, ENV_LEASE_WAIT, float(DEFAULT_LEASE_WAIT_SECONDS), non_negative_float, environ
        ),
        max_sessions=resolve(args.max_sessions, ENV_MAX_SESSIONS, 0, non_negative_int, environ),
        max_attempts=resolve(args.max_attempts, ENV_MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS, positive_int, environ),
        workers=resolve(args.workers, ENV_WORKERS, 0, non_negative_int, environ),
        db_memory=resolve(args.db_memory, ENV_DB_MEMORY, DEFAULT_DB_MEMORY, memory_size, environ),
        config=resolve(args.config, ENV_CONFIG, {}, parse_config, environ),
        termination_log=termination_log(args.termination_log, environ),
        environ=dict(environ),
    )


def termination_log(flag: Path | None, environ: Mapping[str, str]) -> Path | None:
    """Where to write the compact summary: the flag, its variable, or a pod's termination log."""
    termination = resolve(flag, ENV_TERMINATION_LOG, None, Path, environ)
    # Only a container's /dev/termination-log is for us: on a host the file may belong to anyone.
    in_pod = bool(environ.get("KUBERNETES_SERVICE_HOST"))
    if termination is None and in_pod and Path(DEFAULT_TERMINATION_LOG).exists():
        termination = Path(DEFAULT_TERMINATION_LOG)
    return termination


def lease_spec(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """``--lease``: ``file`` or ``k8s:NAME``."""
    spec: str = resolve(args.lease, ENV_LEASE, "file", str, environ)
    if spec != "file" and not spec.startswith("k8s:"):
        raise UsageError(f"--lease {spec!r}: use 'file' or 'k8s:NAME'")
    return spec


def lease_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> LeaseSettings:
    """The run's lease; a Kubernetes Lease's name, namespace and duration are checked here."""
    spec = lease_spec(args, environ)
    if spec == "file":
        return LeaseSettings(spec)
    name = spec.removeprefix("k8s:")
    if not LEASE_NAME.fullmatch(name):
        raise UsageError(f"--lease {spec!r}: {name!r} is not a valid Lease name (lowercase DNS subdomain)")
    namespace = resolve(getattr(args, "lease_namespace", None), ENV_LEASE_NAMESPACE, None, str, environ)
    duration = resolve(
        getattr(args, "lease_duration", None),
        ENV_LEASE_DURATION,
        DEFAULT_LEASE_DURATION_SECONDS,
        positive_int,
        environ,
    )
    if duration < MIN_LEASE_DURATION_SECONDS:
        raise UsageError(f"--lease-duration {duration}: at least {MIN_LEASE_DURATION_SECONDS} seconds")
    return LeaseSettings(spec, namespace, duration)


def maintenance_lease_wait(flag: float | None, environ: Mapping[str, str]) -> float:
    """How long ``reset`` and ``forget`` wait for the database's lease."""
    return resolve(flag, ENV_LEASE_WAIT, MAINTENANCE_LEASE_WAIT_SECONDS, non_negative_float, environ)
