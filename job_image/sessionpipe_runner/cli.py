"""The ``sessionpipe`` command line: a thin shell over the runner, the store and the reports.

Every setting resolves the same way: a flag beats its ``SESSIONPIPE_*`` environment variable, which
beats the default. User mistakes end with one line on stderr and exit code 2, a database that cannot
be read or written with one line and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import duckdb

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
    EXIT_DATABASE_BUSY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
)
from sessionpipe_runner import early_sigterm, store
from sessionpipe_runner.lease import Lease
from sessionpipe_runner.lease.file import FileLease
from sessionpipe_runner.names import printable
from sessionpipe_runner.processors import registry
from sessionpipe_runner.processors.base import Processor
from sessionpipe_runner.runner import RunSettings, publish_snapshot, remove_stale_snapshots, run, snapshot_path
from sessionpipe_runner.summary import RunSummary

LEASE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
MIN_LEASE_DURATION_SECONDS = 3

DEFAULT_DATABASE = Path("sessionpipe.duckdb")
CLAUDE_PROJECTS = Path("~/.claude/projects")

T = TypeVar("T")


class UsageError(Exception):
    """A mistake in the command line or settings, explained in one line."""


class DatabaseBusy(Exception):
    """A run holds the database and has published no snapshot yet: try again when it is done."""


# --- resolving settings ---------------------------------------------------------------------------
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


def _arg_type(parse: Callable[[str], T]) -> Callable[[str], T]:
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


def default_sessions(environ: Mapping[str, str]) -> tuple[Path, str | None]:
    """The embedded default: this laptop user's Claude projects, read as that one user's sessions."""
    projects = CLAUDE_PROJECTS.expanduser()
    if projects.is_dir():
        return projects, environ.get("USER") or getpass.getuser()
    raise UsageError(f"no sessions directory: {projects} does not exist; pass --sessions DIR or set {ENV_SESSIONS}")


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


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[RunSettings, str]:
    """The run's settings and its lease spec, from flags, environment and defaults."""
    processor = resolve(args.processor, ENV_PROCESSOR, "", str, environ)
    if not processor:
        raise UsageError(f"which processor? pass --processor NAME or set {ENV_PROCESSOR}")
    sessions_flag = resolve(args.sessions, ENV_SESSIONS, None, Path, environ)
    user = resolve(args.user, ENV_USER, None, str, environ)
    if sessions_flag is None:
        sessions, default_user = default_sessions(environ)
        user = user or default_user
    else:
        sessions = sessions_flag
    if not sessions.is_dir():
        raise UsageError(f"sessions directory {sessions} does not exist or is not a directory")
    if user is not None and (not user or "/" in user or user in {".", ".."}):
        raise UsageError(f"--user {user!r} is not a valid user name")
    lease = resolve(args.lease, ENV_LEASE, "file", str, environ)
    if lease != "file" and not lease.startswith("k8s:"):
        raise UsageError(f"--lease {lease!r}: use 'file' or 'k8s:NAME'")
    termination = resolve(args.termination_log, ENV_TERMINATION_LOG, None, Path, environ)
    # Only a container's /dev/termination-log is for us: on a host the file may belong to anyone.
    in_pod = bool(environ.get("KUBERNETES_SERVICE_HOST"))
    if termination is None and in_pod and Path(DEFAULT_TERMINATION_LOG).exists():
        termination = Path(DEFAULT_TERMINATION_LOG)
    settings = RunSettings(
        processor=processor,
        sessions=sessions,
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
        termination_log=termination,
        environ=dict(environ),
    )
    return settings, lease


def make_lease(spec: str, settings: RunSettings, args: argparse.Namespace | None = None) -> Lease:
    """The lease a ``--lease`` spec names: ``file`` beside the database, or ``k8s:NAME``."""
    if spec == "file":
        return FileLease(settings.database, settings.processor)
    from sessionpipe_runner.lease.k8s import KubernetesLease, LeaseConfigError, default_holder, load_api_client

    name = spec.removeprefix("k8s:")
    if not LEASE_NAME.fullmatch(name):
        raise UsageError(f"--lease {spec!r}: {name!r} is not a valid Lease name (lowercase DNS subdomain)")
    environ = dict(settings.environ)
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
    try:
        api_client, namespace = load_api_client(namespace, environ)
    except LeaseConfigError as error:
        raise UsageError(str(error)) from None
    return KubernetesLease(name, namespace, default_holder(environ), api_client, duration_seconds=duration)


# --- commands ---------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    settings, lease_spec = settings_from_args(args, os.environ)
    processor = _load_processor(settings.processor)
    summary = run(settings, processor, make_lease(lease_spec, settings, args))
    _print_summary(summary, as_json=args.json)
    return summary.exit_code if summary.exit_code is not None else EXIT_FAILED


def _load_processor(name: str) -> Processor:
    try:
        return registry.load(name)
    except registry.ProcessorNotFound as error:
        raise UsageError(str(error)) from None


def _print_summary(summary: RunSummary, *, as_json: bool) -> None:
    if as_json:
        print(summary.to_json())
        return
    counts = (
        f"scanned {summary.scanned}, unchanged {summary.unchanged}, read {summary.hashed}, "
        f"processed {summary.processed}, skipped {summary.skipped}, errors {summary.errors}, "
        f"quarantined {summary.quarantined}, items {summary.items}"
    )
    print(f"{summary.processor} {summary.outcome} in {summary.duration_seconds:.2f}s: {counts}")
    if summary.issues:
        print("  noted: " + ", ".join(f"{reason} {count}" for reason, count in sorted(summary.issues.items())))
    for key, error in list(summary.failures.items())[:10]:
        print(f"  failed: {printable(key)}: {printable(error)}")  # one line each, whatever the name
    if summary.message:
        print(f"  {summary.message}")


def open_for_reading(database: Path) -> duckdb.DuckDBPyConnection:
    """Open the database read-only; if a writer holds it, read the last published snapshot.

    Raises :class:`DatabaseBusy` when a writer holds it and there is no snapshot yet (the first
    run), :class:`~sessionpipe_runner.store.StoreError` when the file cannot be opened.
    """
    if not database.exists():
        raise UsageError(f"database {database} does not exist; run 'sessionpipe run' first or pass --db")
    try:
        return store.connect(database, read_only=True)
    except store.DatabaseLocked:
        snapshot = snapshot_path(database)
        if snapshot.exists():
            print(f"note: {database} is busy; reading the snapshot {snapshot}", file=sys.stderr)
            return store.connect(snapshot, read_only=True)
        raise DatabaseBusy(
            f"database {database} is busy: a run is writing it and has published no snapshot yet; "
            "try again when it ends"
        ) from None


def cmd_status(args: argparse.Namespace) -> int:
    database = database_path(args.db, os.environ, writing=False)
    con = open_for_reading(database)
    with con:
        data = status_data(con)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return EXIT_OK
    if not data["processors"]:
        print(f"{database}: no processor has run yet")
    for name, info in data["processors"].items():
        sessions = info["sessions"]
        print(
            f"{name}: {sessions.get('done', 0)} done, {sessions.get('failed', 0)} failed, "
            f"{sessions.get('quarantined', 0)} quarantined, {info['items']} items; "
            f"{info['vanished']} vanished from the volume (kept)"
        )
        for last in info["last_runs"]:
            print(f"  {last['started_at']}  {last['outcome']:<22} {last['summary_line']}")
    return EXIT_OK


def status_data(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Per processor: sessions by status, items, files that vanished (kept), and the last five runs."""
    processors: dict[str, dict[str, Any]] = {}

    def entry_of(name: str) -> dict[str, Any]:
        return processors.setdefault(name, {"sessions": {}, "items": 0, "vanished": 0, "last_runs": []})

    # A database no run of this build has migrated yet has no vanished_at column.
    vanished = "vanished_at IS NOT NULL" if store.has_column(con, store.STATE_TABLE, "vanished_at") else "false"
    for name, status, count, items, gone in con.execute(
        f"SELECT processor, status, count(*), sum(items), count(*) FILTER (WHERE {vanished}) "
        "FROM session_processor_state GROUP BY ALL ORDER BY ALL"
    ).fetchall():
        entry = entry_of(name)
        entry["sessions"][status] = count
        entry["items"] += int(items or 0)
        entry["vanished"] += int(gone)
    for name, started, outcome, summary in con.execute(
        "SELECT processor, strftime(timezone('UTC', started_at), '%Y-%m-%dT%H:%M:%SZ'), outcome, summary FROM ("
        "  SELECT *, row_number() OVER (PARTITION BY processor ORDER BY started_at DESC) AS n FROM processor_runs"
        ") WHERE n <= 5 ORDER BY processor, started_at DESC"
    ).fetchall():
        entry = entry_of(name)
        details = json.loads(summary) if summary else {}
        line = ", ".join(f"{k} {details[k]}" for k in ("processed", "errors", "skipped") if k in details)
        entry["last_runs"].append({"started_at": started, "outcome": outcome, "summary": details, "summary_line": line})
    return {"processors": processors}


class LeaseBusy(Exception):
    """A maintenance command could not take the database's lease in its wait."""


@contextmanager
def holding_lease(database: Path, holder: str, lease_wait: float | None) -> Iterator[None]:
    """Hold the database's file lease around a command that writes outside a run (reset, forget)."""
    lease = FileLease(database, holder)
    try:
        lease.acquire(resolve(lease_wait, ENV_LEASE_WAIT, 10.0, non_negative_float, os.environ))
    except Exception as error:
        raise LeaseBusy(str(error)) from None
    try:
        yield
    finally:
        lease.release()


def cmd_reset(args: argparse.Namespace) -> int:
    database = database_path(args.db, os.environ, writing=True)
    if not database.exists():
        raise UsageError(f"database {database} does not exist")
    processor = _load_processor(args.processor)
    with holding_lease(database, f"reset {args.processor}", args.lease_wait):
        con = store.connect(database)
        with con:
            store.migrate(con, processor)
            count = reset_sessions(con, processor, session=args.session, quarantined=args.quarantined)
            con.execute("CHECKPOINT")
    print(f"reset {count} session(s) of {args.processor}; they are processed again on the next run")
    return EXIT_OK


def reset_sessions(
    con: duckdb.DuckDBPyConnection, processor: Processor, *, session: str | None, quarantined: bool
) -> int:
    """Forget sessions' state and rows so the next run processes them again; returns how many."""
    if session is not None:
        where, params = "processor = ? AND session_file = ?", [processor.name, session]
    elif quarantined:
        where, params = "processor = ? AND status = 'quarantined'", [processor.name]
    else:
        where, params = "processor = ?", [processor.name]
    keys = [
        row[0]
        for row in con.execute(f"SELECT session_file FROM session_processor_state WHERE {where}", params).fetchall()
    ]
    if session is not None and not keys:
        raise UsageError(f"no state for session {session!r} of processor {processor.name!r}")
    with store.transaction(con):
        if keys:
            processor.forget(con, keys)
        con.execute(f"DELETE FROM session_processor_state WHERE {where}", params)
    return len(keys)


def cmd_forget(args: argparse.Namespace) -> int:
    """Delete session files' state and every processor's rows for them, for good (or list them)."""
    database = database_path(args.db, os.environ, writing=True)
    if not database.exists():
        raise UsageError(f"database {database} does not exist")
    if args.dry_run:
        with open_for_reading(database) as con:
            doomed = forgettable(con, vanished=args.vanished, user=args.user, session=args.session)
        print(f"would forget {_files(len(doomed))}{_by_processor(doomed)}")
        for processor, key in doomed:
            print(f"  {processor}  {key}")
        return EXIT_OK
    with holding_lease(database, "forget", args.lease_wait):
        remove_stale_snapshots(database)
        con = store.connect(database)
        with con:
            store.migrate(con)
            doomed = forgettable(con, vanished=args.vanished, user=args.user, session=args.session)
            forget_sessions(con, doomed)
            con.execute("CHECKPOINT")
        publish_snapshot(database)  # the snapshot must not keep what was forgotten
    print(f"forgot {_files(len(doomed))}{_by_processor(doomed)}")
    return EXIT_OK


def _files(count: int) -> str:
    return f"{count} session file{'' if count == 1 else 's'}"


def _by_processor(doomed: Sequence[tuple[str, str]]) -> str:
    counts = Counter(processor for processor, _ in doomed)
    if not counts:
        return ""
    return " (" + ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) + ")"


def forgettable(
    con: duckdb.DuckDBPyConnection, *, vanished: bool, user: str | None, session: str | None
) -> list[tuple[str, str]]:
    """(processor, session file) of every state row that matches the selection, in order."""
    if vanished:
        if not store.has_column(con, store.STATE_TABLE, "vanished_at"):
            return []  # no run of this build has marked anything vanished yet
        where, params = "vanished_at IS NOT NULL", []
    elif user is not None:
        where, params = "user_name = ?", [user]
    else:
        where, params = "session_file = ?", [str(session)]
    rows = con.execute(
        f"SELECT processor, session_file FROM {store.STATE_TABLE} WHERE {where} ORDER BY ALL", params
    ).fetchall()
    return [(str(processor), str(key)) for processor, key in rows]


def forget_sessions(con: duckdb.DuckDBPyConnection, doomed: Sequence[tuple[str, str]]) -> None:
    """Delete the state rows and each processor's rows of ``doomed`` (processor, session file) in one transaction.

    Every processor named must be installed: its tables are its own to clean.
    """
    keys_by_processor: dict[str, list[str]] = {}
    for processor_name, key in doomed:
        keys_by_processor.setdefault(processor_name, []).append(key)
    processors = {name: _load_processor(name) for name in keys_by_processor}
    for processor in processors.values():
        store.migrate(con, processor)
    with store.transaction(con):
        for name, keys in keys_by_processor.items():
            processors[name].forget(con, keys)
            con.execute(f"DELETE FROM {store.STATE_TABLE} WHERE processor = ? AND session_file = ANY(?)", [name, keys])


def cmd_processors(args: argparse.Namespace) -> int:
    names = registry.available()
    rows: list[dict[str, Any]] = []
    for name in names:
        try:
            processor = registry.load(name)
            rows.append({"name": name, "version": processor.version, "source": registry.describe(name)})
        except registry.ProcessorLoadError as error:
            rows.append({"name": name, "version": None, "source": registry.describe(name), "error": str(error)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(
                f"{row['name']:<16} {row['version'] or 'BROKEN':<24} {row['source']}"
                + (f"  {row['error']}" if "error" in row else "")
            )
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from sessionpipe_runner import reports

    database = database_path(args.db, os.environ, writing=False)
    con = open_for_reading(database)
    with con:
        try:
            data, text = reports.build(con, args)
        except reports.ReportError as error:
            raise UsageError(str(error)) from None
    print(json.dumps(data, indent=2, default=str) if args.json else text)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from sessionpipe_runner import synth

    stats = synth.generate_corpus(args.out, users=args.users, target_bytes=args.megabytes * 1024 * 1024, seed=args.seed)
    print(f"wrote {stats} under {args.out}")
    return EXIT_OK


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Run ``usage`` on the embedded default and print a monthly report: the README's first command."""
    environ = dict(os.environ)
    sessions_arg: list[str] = []
    if not environ.get(ENV_SESSIONS) and not CLAUDE_PROJECTS.expanduser().is_dir():
        from sessionpipe_runner import synth

        demo = Path(".sessionpipe/demo-sessions")
        if not demo.is_dir():
            stats = synth.generate_corpus(demo, users=3, target_bytes=4 * 1024 * 1024, seed=7)
            print(f"no ~/.claude/projects here: generated demo transcripts ({stats}) in {demo}")
        sessions_arg = ["--sessions", str(demo)]
    code = main(["run", "--processor", "usage", *sessions_arg])
    if code != EXIT_OK:
        return code
    print()
    return main(["report", "usage", "--by", "month"])


# --- the parser -----------------------------------------------------------------------------------
class OneLineParser(argparse.ArgumentParser):
    """Reports a command-line mistake in one line that points at --help, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sessionpipe",
        description="Run session processors over AI-assistant transcripts into a DuckDB file.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("run", help="run one processor over the sessions once")
    p.add_argument("--processor", help=f"processor name (env {ENV_PROCESSOR})")
    p.add_argument("--sessions", type=Path, help=f"sessions root (env {ENV_SESSIONS}; default ~/.claude/projects)")
    p.add_argument("--user", help=f"read --sessions as this one user's Claude projects/ directory (env {ENV_USER})")
    p.add_argument("--db", type=Path, help=f"DuckDB file (env {ENV_DB}; default ./{DEFAULT_DATABASE})")
    p.add_argument("--lease", help=f"single-writer lease: 'file' or 'k8s:NAME' (env {ENV_LEASE}; default file)")
    p.add_argument(
        "--lease-wait",
        type=_arg_type(non_negative_float),
        metavar="SECONDS",
        help=f"how long to wait for the lease (env {ENV_LEASE_WAIT}; default {DEFAULT_LEASE_WAIT_SECONDS})",
    )
    p.add_argument(
        "--lease-namespace",
        metavar="NS",
        help=f"namespace of a k8s: lease (env {ENV_LEASE_NAMESPACE}; default the pod's or the kubeconfig's)",
    )
    p.add_argument(
        "--lease-duration",
        type=_arg_type(positive_int),
        metavar="SECONDS",
        help=f"duration of a k8s: lease (env {ENV_LEASE_DURATION}; default {DEFAULT_LEASE_DURATION_SECONDS})",
    )
    p.add_argument(
        "--max-sessions",
        type=_arg_type(non_negative_int),
        metavar="N",
        help=f"process at most N sessions this run, 0 for no cap (env {ENV_MAX_SESSIONS})",
    )
    p.add_argument(
        "--max-attempts",
        type=_arg_type(positive_int),
        metavar="N",
        help=f"failures before a session is quarantined (env {ENV_MAX_ATTEMPTS}; default {DEFAULT_MAX_ATTEMPTS})",
    )
    p.add_argument(
        "--workers",
        type=_arg_type(non_negative_int),
        metavar="N",
        help="processes that read and process files, for processors that allow it: 1 for none besides the "
        "runner, 0 (default) for one per available CPU when there are over 32 MB to read "
        f"(env {ENV_WORKERS})",
    )
    p.add_argument(
        "--db-memory",
        type=_arg_type(memory_size),
        metavar="SIZE",
        help=f"what DuckDB may keep in memory while writing, such as 256MB or 1GiB; it spills to disk beyond "
        f"(env {ENV_DB_MEMORY}; default {DEFAULT_DB_MEMORY})",
    )
    p.add_argument(
        "--config",
        type=_arg_type(parse_config),
        metavar="JSON",
        help=f"processor settings as a JSON object or @file (env {ENV_CONFIG})",
    )
    p.add_argument(
        "--termination-log",
        type=Path,
        metavar="FILE",
        help=f"also write a compact summary here (env {ENV_TERMINATION_LOG}; "
        f"default {DEFAULT_TERMINATION_LOG} in a pod)",
    )
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(handler=cmd_run)

    p = commands.add_parser("status", help="sessions done / failed / quarantined per processor, and the last runs")
    p.add_argument("--db", type=Path, help=f"DuckDB file (env {ENV_DB})")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)

    p = commands.add_parser("report", help="reports of a processor's results")
    from sessionpipe_runner import reports

    reports.add_arguments(p, db_help=f"DuckDB file (env {ENV_DB})")
    p.set_defaults(handler=cmd_report)

    p = commands.add_parser("reset", help="make sessions be processed again on the next run")
    p.add_argument("--processor", required=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", metavar="KEY", help="one session file key (<user>/<project>/<file>.jsonl)")
    which.add_argument("--quarantined", action="store_true", help="every quarantined session")
    which.add_argument("--all", action="store_true", help="every session of the processor")
    p.add_argument("--db", type=Path, help=f"DuckDB file (env {ENV_DB})")
    p.add_argument("--lease-wait", type=_arg_type(non_negative_float), metavar="SECONDS")
    p.set_defaults(handler=cmd_reset)

    p = commands.add_parser(
        "forget", help="delete session files' state and rows for good (vanished files, a user's files)"
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--vanished", action="store_true", help="every file that vanished from the volume")
    which.add_argument("--user", metavar="NAME", help="every file of one user")
    which.add_argument("--session", metavar="KEY", help="one session file key (<user>/<project>/<file>.jsonl)")
    p.add_argument("--dry-run", action="store_true", help="list what would be forgotten, change nothing")
    p.add_argument("--db", type=Path, help=f"DuckDB file (env {ENV_DB})")
    p.add_argument("--lease-wait", type=_arg_type(non_negative_float), metavar="SECONDS")
    p.set_defaults(handler=cmd_forget)

    p = commands.add_parser("processors", help="list the installed processors")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_processors)

    p = commands.add_parser("demo", help="generate realistic demo transcripts")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--users", type=_arg_type(positive_int), default=3)
    p.add_argument("--megabytes", type=_arg_type(positive_int), default=4)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(handler=cmd_demo)

    p = commands.add_parser("quickstart", help="run usage on the default sessions (or demo data) and report")
    p.set_defaults(handler=cmd_quickstart)

    from sessionpipe_runner import runnow

    p = commands.add_parser("run-now", help="ask the operator to run a SessionProcessor now (a cluster)")
    runnow.add_arguments(p)
    p.set_defaults(handler=runnow.cmd_run_now)
    return parser


def _log_to_stderr() -> None:
    """The runner's own notices (a lease wait, a failed lease renewal) as plain lines on stderr.

    Only sessionpipe's loggers: libraries' INFO lines (an HTTP client's per request) stay quiet.
    """
    logger = logging.getLogger("sessionpipe_runner")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("sessionpipe: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    if args.handler is not cmd_run:
        early_sigterm.stop_recording()  # only a run turns SIGTERM into a summary
    try:
        code: int = args.handler(args)
    except UsageError as error:
        print(f"sessionpipe: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseBusy as error:
        print(f"sessionpipe: {error}", file=sys.stderr)
        return EXIT_DATABASE_BUSY
    except LeaseBusy as error:
        print(f"sessionpipe: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (registry.ProcessorLoadError, store.StoreError) as error:
        print(f"sessionpipe: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    except duckdb.Error as error:  # a damaged file fails on the block a statement reads, not on opening
        print(f"sessionpipe: error: the database cannot be used: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_OK
    return code


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


if __name__ == "__main__":
    raise SystemExit(main())
