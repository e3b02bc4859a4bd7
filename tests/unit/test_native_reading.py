"""The compiled file reading (``sessionpipe_native.read_below``) against the Python reading, the
reference: the same snapshot, or the same exception, for every real transcript read in place and
for every odd file a sessions volume can hold."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sessionpipe_runner import reading
from sessionpipe_runner.reading import Committed, Snapshot, read_snapshot
from tests.runner_support import CORPUS

Read = Snapshot | tuple[type[BaseException], int | None]


def _read_both(monkeypatch: pytest.MonkeyPatch, *args: object, **kwargs: object) -> tuple[Read, Read]:
    outcomes: list[Read] = []
    for setting in ("", reading.PYTHON_FILE_READING):
        monkeypatch.setenv(reading.ENV_FILE_READING, setting)
        try:
            outcomes.append(read_snapshot(*args, **kwargs))  # type: ignore[arg-type]
        except OSError as error:
            outcomes.append((type(error), error.errno))
    return outcomes[0], outcomes[1]


def test_the_compiled_reading_is_installed_and_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(reading.ENV_FILE_READING, raising=False)
    assert reading.compiled_reading() is not None
    monkeypatch.setenv(reading.ENV_FILE_READING, reading.PYTHON_FILE_READING)
    assert reading.compiled_reading() is None


def test_every_real_transcript_reads_as_the_python_reading_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    files = sorted(CORPUS.rglob("*.jsonl"))
    assert files
    for path in files:
        compiled, python = _read_both(monkeypatch, path, str(CORPUS))
        assert compiled == python, path
        assert isinstance(compiled, Snapshot) and compiled.lines == compiled.data.count(b"\n")
        # a line limit smaller than the file: the bounded reading, from the descriptor handed back
        compiled, python = _read_both(monkeypatch, path, str(CORPUS), line_limit=4096)
        assert compiled == python, path


ODD_FILES: dict[str, bytes] = {
    "empty.jsonl": b"",
    "one.jsonl": b'{"a": 1}\n',
    "no-newline-complete.jsonl": b'{"a": 1}\n{"b": 2}',
    "no-newline-incomplete.jsonl": b'{"a": 1}\n{"b": ',
    "only-incomplete.jsonl": b'{"b": ',
    "blank-tail.jsonl": b'{"a": 1}\n   ',
    "crlf.jsonl": b'{"a": 1}\r\n{"b": 2}\r\n',
    "newlines-only.jsonl": b"\n\n\n",
    "not-utf8-\udcff.jsonl": b'{"a": "\xff"}\n',
    "long.jsonl": b'{"a": "' + b"x" * 5000 + b'"}\n{"b": 2}\n{"c": ',
}


def test_odd_files_read_as_the_python_reading_reads_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    folder = root / "user" / "-proj"
    folder.mkdir(parents=True)
    for name, content in ODD_FILES.items():
        path = folder / name
        path.write_bytes(content)
        for limit in (reading.MAX_LINE_BYTES, 100):
            compiled, python = _read_both(monkeypatch, path, str(root), line_limit=limit)
            assert compiled == python, (name, limit)
            compiled, python = _read_both(monkeypatch, str(path), "", line_limit=limit)  # no root
            assert compiled == python, (name, limit)


def test_a_grown_file_reads_from_its_committed_prefix_as_in_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n')
    monkeypatch.setenv(reading.ENV_FILE_READING, reading.PYTHON_FILE_READING)
    first = read_snapshot(path)
    committed = Committed(first.content_hash, first.length, first.lines)
    with path.open("ab") as handle:
        handle.write(b'{"c": 3}\n{"d": ')
    compiled, python = _read_both(monkeypatch, path, committed=committed)
    assert compiled == python
    assert isinstance(compiled, Snapshot) and (compiled.appended, compiled.first_line) == (b'{"c": 3}\n', 3)


def test_files_that_must_not_be_read_are_refused_as_in_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    folder = root / "user" / "-proj"
    folder.mkdir(parents=True)
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(b'{"secret": 1}\n')
    (folder / "link.jsonl").symlink_to(outside)
    (root / "user" / "-linked").symlink_to(folder, target_is_directory=True)
    (folder / "real.jsonl").write_bytes(b'{"a": 1}\n')
    os.mkfifo(folder / "fifo.jsonl")
    (folder / "folder.jsonl").mkdir()
    (root / "user" / "-dangling").symlink_to(tmp_path / "nowhere")
    cases = {
        folder / "link.jsonl": reading.SymlinkRefused,
        root / "user" / "-linked" / "real.jsonl": reading.SymlinkRefused,
        root / "user" / "-dangling" / "x.jsonl": reading.SymlinkRefused,
        folder / "fifo.jsonl": reading.NotARegularFile,
        folder / "folder.jsonl": reading.NotARegularFile,
        folder / "gone.jsonl": FileNotFoundError,
        root / "user" / "-nowhere" / "x.jsonl": FileNotFoundError,
        folder / "real.jsonl" / "under-a-file.jsonl": NotADirectoryError,
    }
    for path, refused in cases.items():
        compiled, python = _read_both(monkeypatch, path, str(root))
        assert compiled == python, path
        assert isinstance(compiled, tuple) and issubclass(compiled[0], refused), (path, compiled)
    with pytest.raises(OSError):  # not below the root: refused before any call
        reading.read_snapshot(outside, str(root))


def test_the_compiled_reading_opens_no_file_through_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each os.open (and fstat, read, close) in Python releases the GIL and takes it back, waiting
    for whichever thread holds it: the compiled reading makes them without the GIL."""
    path = tmp_path / "user" / "-proj" / "s.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"a": 1}\n')
    calls: list[object] = []
    real_open = os.open

    def counting_open(*args: object, **kwargs: object) -> int:
        calls.append(args[0])
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reading.os, "open", counting_open)
    monkeypatch.delenv(reading.ENV_FILE_READING, raising=False)
    compiled = read_snapshot(path, str(tmp_path))
    assert calls == []
    monkeypatch.setenv(reading.ENV_FILE_READING, reading.PYTHON_FILE_READING)
    assert read_snapshot(path, str(tmp_path)) == compiled
    assert len(calls) == 4  # the root, two folders, the file
