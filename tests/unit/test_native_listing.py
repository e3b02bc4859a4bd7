"""The compiled listing (``walk_user_folders``, native/src/listing.rs) against the Python walk it replaces.

Each test builds a hostile tree and scans it both ways; every column of the two scans (keys,
sizes, mtimes, names, origins, escaped indexes) and every issue count must be equal, in order.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from sessionpipe_runner import scan
from sessionpipe_runner.scan import MAX_FOLDER_DEPTH, ScanResult, scan_roots, scan_sessions

NOBODY = 65534


def columns(result: ScanResult) -> tuple[object, ...]:
    return (result.keys, result.sizes, result.mtimes, result.names, result.origins, result.escaped, result.issues)


def both(monkeypatch: pytest.MonkeyPatch, make: Callable[[], ScanResult]) -> ScanResult:
    """``make()`` with the Python walk and with the compiled listing; asserts they are equal."""
    monkeypatch.setenv(scan.ENV_LISTING, scan.PYTHON_LISTING)
    reference = make()
    monkeypatch.delenv(scan.ENV_LISTING)
    assert scan.compiled_listing() is not None
    native = make()
    assert columns(native) == columns(reference)
    return native


def session(path: Path | bytes, data: bytes = b'{"n": 1}\n') -> None:
    with open(path, "wb") as handle:  # noqa: PTH123 (bytes paths)
        handle.write(data)


def hostile_tree(base: Path) -> Path:
    """A volume with every odd entry the scan knows of (and files around them that must be found)."""
    root = base / "sessions"
    project = root / "alice" / "-app"
    project.mkdir(parents=True)
    outside = base / "outside"
    (outside / "folder").mkdir(parents=True)
    session(outside / "secret.jsonl")
    session(outside / "folder" / "secret.jsonl")
    for name in ("a.jsonl", "b.jsonl", "notes.txt", "new\nline.jsonl", "back\\slash.jsonl", "per%25cent.jsonl"):
        session(project / name)
    session(project / "é-utf8.jsonl")
    (project / "inside-link.jsonl").symlink_to(project / "a.jsonl")
    (project / "outside-link.jsonl").symlink_to(outside / "secret.jsonl")
    (project / "dangling.jsonl").symlink_to(base / "nowhere.jsonl")
    (project / "loop.jsonl").symlink_to(project / "loop.jsonl")
    (project / "link.txt").symlink_to(project / "notes.txt")
    (project / "dir-link").symlink_to(outside / "folder", target_is_directory=True)
    (project / "dir-link.jsonl").symlink_to(project.parent, target_is_directory=True)
    os.mkfifo(project / "fifo.jsonl")
    os.mkfifo(project / "fifo.txt")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(project / "socket.jsonl"))
    (project / "folder.jsonl").mkdir()
    session(project / "folder.jsonl" / "inner.jsonl")
    (project / "empty").mkdir()
    agents = project / "0f1e" / "subagents"
    agents.mkdir(parents=True)
    for number in range(3):
        session(agents / f"agent-{number}.jsonl", b"x" * number)
    session(project / "0f1e" / "chat.jsonl")
    raw = os.fsencode(project)
    session(raw + b"/bad-\xff.jsonl")
    session(raw + b"/collide-\xfe.jsonl")
    session(project / "collide-\\xfe.jsonl")  # the escaped key of the name above: it wins
    os.mkdir(raw + b"/proj-\xfa")  # noqa: PTH102 (bytes paths)
    session(raw + b"/proj-\xfa/inside.jsonl")
    session(project / "future.jsonl")
    os.utime(project / "future.jsonl", ns=(0, 16_000_000_000 * 10**9 + 123))  # past 2262: more than 64 bits of ns
    deep = project
    for level in range(MAX_FOLDER_DEPTH + 3):
        deep = deep / f"d{level}"
    deep.mkdir(parents=True)
    session(deep / "too-deep.jsonl")
    session(deep.parent.parent.parent / "just-deep-enough.jsonl")
    (root / "bob").mkdir()
    session(root / "bob" / "flat.jsonl")
    os.mkdir(os.fsencode(root) + b"/user-\xff")  # noqa: PTH102 (bytes paths)
    session(os.fsencode(root) + b"/user-\xff/p.jsonl")
    (root / "new\nuser" / "p").mkdir(parents=True)
    session(root / "new\nuser" / "p" / "s.jsonl")
    (root / "empty-user").mkdir()
    session(root / "stray.jsonl")
    session(root / "stray.txt")
    (root / "user-link").symlink_to(outside, target_is_directory=True)
    os.mkfifo(root / "fifo.jsonl")
    return root


def test_a_hostile_volume_is_listed_as_the_python_walk_lists_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = hostile_tree(tmp_path)
    result = both(monkeypatch, lambda: scan_sessions(root))
    # The tree has what the test means it to have (equal scans that found nothing would prove nothing).
    assert "alice/-app/0f1e/subagents/agent-2.jsonl" in result.keys
    assert "alice/-app/proj-\\xfa/inside.jsonl" in result.keys
    assert "user-\\xff/p.jsonl" in result.keys
    # Past 2262 (the filesystem may clamp the time set, not below that): both walks meet it, and the
    # scan keeps it at the store's bound.
    assert max(result.mtimes) == 2**63 - 1
    assert {
        "symlink_skipped",
        "symlinked_dir_skipped",
        "not_a_file",
        "too_deep",
        "name_collision",
        "mtime_out_of_range",
    } <= set(result.issues)
    assert {"outside_user_folder", "not_jsonl"} <= set(result.issues)


def test_one_users_projects_folder_is_listed_as_the_python_walk_lists_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = hostile_tree(tmp_path)
    for user in ("alice", "b\udcffob", "new\nuser"):
        result = both(monkeypatch, lambda user=user: scan_sessions(root / "alice", user))  # type: ignore[misc]
        assert len(result) > 10


def test_several_roots_and_many_users_in_several_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "USERS_PER_CALL", 3)
    first, second = hostile_tree(tmp_path / "one"), tmp_path / "two"
    for number in range(11):
        (second / f"user{number}" / "p").mkdir(parents=True)
        session(second / f"user{number}" / "p" / "s.jsonl", b"x" * number)
    session(second / "user3" / "stray.txt")
    result = both(monkeypatch, lambda: scan_roots([first, second]))
    assert "user10/p/s.jsonl" in result.keys
    both(monkeypatch, lambda: scan_sessions(tmp_path / "missing"))


def test_unreadable_folders_are_counted_as_the_python_walk_counts_them(tmp_path: Path) -> None:
    """As a user that may not read some folders (the tests run as root, who may read anything)."""
    root = hostile_tree(tmp_path)
    project = root / "alice" / "-app"
    (project / "empty").chmod(0o000)  # cannot be opened
    (project / "0f1e").chmod(0o311)  # can be entered, not listed
    (project / "folder.jsonl").chmod(0o444)  # can be listed, its entries not looked at
    (root / "bob").chmod(0o000)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)  # reached through /proc by the other user
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            where = Path(f"/proc/self/fd/{root_fd}")
            os.environ[scan.ENV_LISTING] = scan.PYTHON_LISTING
            reference = scan_sessions(where)
            del os.environ[scan.ENV_LISTING]
            answer = (columns(reference), columns(scan_sessions(where)))
        except BaseException as error:
            answer = repr(error)
        with os.fdopen(write, "wb") as pipe:
            pickle.dump(answer, pipe)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pickle.load(pipe)
    os.waitpid(child, 0)
    os.close(root_fd)
    assert not isinstance(answer, str), answer
    reference, native = answer
    assert native == reference
    issues = reference[-1]
    assert issues["unreadable_dir"] == 3  # empty, 0f1e, bob
    assert issues["unreadable"] >= 1  # folder.jsonl/inner.jsonl


def test_no_descriptor_stays_open_after_a_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "USERS_PER_CALL", 2)
    root = hostile_tree(tmp_path)
    before = sorted(Path("/proc/self/fd").iterdir())
    for _ in range(3):
        both(monkeypatch, lambda: scan_sessions(root))
        both(monkeypatch, lambda: scan_sessions(root / "alice", "alice"))
    assert sorted(Path("/proc/self/fd").iterdir()) == before
