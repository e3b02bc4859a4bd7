"""New files read and parsed by one compiled call per chunk (``sessionpipe_native.usage_files``,
:meth:`UsageProcessor.read_and_process`) against the file-by-file way it stands in for
(:func:`~sessionpipe_runner.reading.read_snapshot`, then :meth:`UsageProcessor.process`): the same
snapshot and the same rows and issues for every real transcript read in place and for odd files,
the same exception for a file that must not be read, and the file-by-file way itself for what the
call leaves to it."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sessionpipe_runner import reading, work
from sessionpipe_runner.processors.base import Output, ReadAndProcessed, RunContext, SessionFile
from sessionpipe_runner.processors.usage import UsageProcessor, columns
from sessionpipe_runner.processors.usage import lines as line_limits
from sessionpipe_runner.reading import Snapshot
from tests.runner_support import CORPUS
from tests.unit.test_native_parse import columnar_rows, comparable, usage_lines

#: What a file came to: its snapshot (without data) and its rows and issues, or the refusal.
Outcome = tuple[Snapshot, list[list[object]], dict[str, int], int] | tuple[type[BaseException], int | None] | None


@pytest.fixture
def usage(monkeypatch: pytest.MonkeyPatch) -> UsageProcessor:
    monkeypatch.delenv(reading.ENV_FILE_READING, raising=False)
    processor = UsageProcessor()
    processor.start(RunContext(run_id="r", database=Path("/nowhere"), config={}, environ={}))
    assert processor.compiled is not None
    return processor


def session_file(path: Path, root: Path) -> SessionFile:
    parts = path.relative_to(root).parts
    info = path.lstat() if path.is_symlink() or path.exists() else None
    return SessionFile(
        key="/".join(parts),
        location=str(path),
        user=parts[0],
        project=parts[-2] if len(parts) > 2 else "",
        session_id=path.stem,
        size=info.st_size if info else 0,
        mtime_ns=info.st_mtime_ns if info else 0,
        root=str(root),
    )


def outcome(snapshot: Snapshot, output: Output) -> Outcome:
    rows = [[comparable(value) for value in row] for row in columnar_rows(output)] if output.items else []
    return snapshot.without_data(), rows, dict(output.issues), output.items


def file_by_file(usage: UsageProcessor, files: Sequence[SessionFile]) -> list[Outcome]:
    found: list[Outcome] = []
    for file in files:
        try:
            snapshot = reading.read_snapshot(file.location, file.root)
        except OSError as error:
            found.append((type(error), error.errno))
            continue
        found.append(outcome(snapshot, usage.process(file, snapshot.data)))
    return found


def in_one_call(usage: UsageProcessor, files: Sequence[SessionFile]) -> list[Outcome]:
    results: Sequence[ReadAndProcessed] | None = usage.read_and_process(files)
    assert results is not None
    found: list[Outcome] = []
    for result in results:
        if result is None or isinstance(result, OSError):
            found.append(None if result is None else (type(result), result.errno))
        else:
            found.append(outcome(*result))
    return found


def test_real_transcripts_read_and_parse_in_one_call_as_file_by_file(usage: UsageProcessor) -> None:
    files = [session_file(path, CORPUS) for path in sorted(CORPUS.rglob("*.jsonl"))]
    assert files
    together = in_one_call(usage, files)
    assert together == file_by_file(usage, files)
    assert all(found is not None for found in together)  # every transcript ends with a newline
    assert sum(found[3] for found in together if found is not None and len(found) == 4) > 0  # type: ignore[misc]


def write_files(folder: Path, contents: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        (folder / name).write_bytes(content)
    return [folder / name for name in contents]


def test_odd_files_in_one_call_as_file_by_file_or_left_to_it(tmp_path: Path, usage: UsageProcessor) -> None:
    lines = usage_lines()[:40]
    body = b"\n".join(lines) + b"\n"
    # A version with a non-ASCII digit, which the compiled parser hands back to the Python reading:
    # its row is made by the reference for the file it belongs to, whatever that file's place.
    deferred = re.sub(rb'"version":"([^"]*)[0-9]"', '"version":"\\1\uff18"'.encode(), lines[0], count=1)
    assert deferred != lines[0]
    contents = {
        "plain.jsonl": body,
        "empty.jsonl": b"",
        "blank-tail.jsonl": body + b"  \t",
        "newlines-only.jsonl": b"\n\n\n",
        "crlf.jsonl": b"\r\n".join(lines[:5]) + b"\r\n",
        "deferred-a.jsonl": lines[1] + b"\n" + deferred + b"\n",
        "not-json.jsonl": b'{"usage": \n' + body,
        "deferred-b.jsonl": deferred + b"\n" + lines[2] + b"\n",
        "not-utf8.jsonl": lines[3].replace(b'"', b'"\xff', 1) + b"\n" + body,
    }
    left = {
        "no-newline-complete.jsonl": body + lines[4],
        "no-newline-incomplete.jsonl": body + lines[4][:30],
    }
    root = tmp_path / "root"
    paths = write_files(root / "alice" / "-proj", contents) + write_files(root / "bob" / "-other", left)
    files = [session_file(path, root) for path in paths]
    together, alone = in_one_call(usage, files), file_by_file(usage, files)
    for path, ours, theirs in zip(paths, together, alone, strict=True):
        if path.name in left:
            assert ours is None, path.name  # for the Python reading to judge the last line
        else:
            assert ours == theirs, path.name
    deferred_rows = [row for found in together[5:8:2] if found for row in found[1] if "\uff18" in str(row)]  # type: ignore[index]
    assert [row[0][1] for row in deferred_rows] == [files[5].key, files[7].key]  # each its own file's


def test_long_lines_and_long_files_as_file_by_file(
    tmp_path: Path, usage: UsageProcessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = usage_lines()[:20]
    long_line = max(lines, key=len)
    paths = write_files(
        tmp_path / "root" / "alice" / "-proj",
        {
            "long-line.jsonl": b"\n".join(lines) + b"\n",
            "short.jsonl": b"\n".join(line for line in lines if len(line) < len(long_line)) + b"\n",
        },
    )
    files = [session_file(path, tmp_path / "root") for path in paths]
    monkeypatch.setattr(line_limits, "MAX_LINE_BYTES", len(long_line) - 1)  # the parser's limit: counted
    together = in_one_call(usage, files)
    assert together == file_by_file(usage, files)
    assert together[0] is not None and together[0][2].get("line_too_long")  # type: ignore[index]
    monkeypatch.setattr(reading, "MAX_LINE_BYTES", paths[1].stat().st_size)  # the reading's: left to it
    assert in_one_call(usage, files) == [None, file_by_file(usage, files[1:])[0]]


def test_files_that_must_not_be_read_are_refused_as_file_by_file(tmp_path: Path, usage: UsageProcessor) -> None:
    root = tmp_path / "root"
    folder = root / "user" / "-proj"
    folder.mkdir(parents=True)
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(usage_lines()[0] + b"\n")
    (folder / "link.jsonl").symlink_to(outside)
    (root / "user" / "-linked").symlink_to(folder, target_is_directory=True)
    (folder / "real.jsonl").write_bytes(usage_lines()[1] + b"\n")
    os.mkfifo(folder / "fifo.jsonl")
    (folder / "folder.jsonl").mkdir()
    paths = [
        folder / "link.jsonl",
        root / "user" / "-linked" / "real.jsonl",
        folder / "fifo.jsonl",
        folder / "folder.jsonl",
        folder / "gone.jsonl",
        folder / "real.jsonl",
    ]
    files = [session_file(path, root) for path in paths]
    together = in_one_call(usage, files)
    assert together == file_by_file(usage, files)
    kinds: list[Any] = [found[0] if found and len(found) == 2 else None for found in together]
    assert kinds[:5] == [
        reading.SymlinkRefused,
        reading.SymlinkRefused,
        reading.NotARegularFile,
        reading.NotARegularFile,
        FileNotFoundError,
    ]
    assert together[5] is not None and len(together[5]) == 4


def chunk_outcomes(usage: UsageProcessor, files: Sequence[SessionFile]) -> list[object]:
    chunk = work.examine_chunk(usage, {"usage_rows": list(columns.COLUMNS)}, [(file, None) for file in files])
    return [
        (examined.file, examined.outcome, examined.snapshot, dict(examined.output.issues) if examined.output else None)
        for examined in chunk.examined
    ]


def test_a_workers_chunk_is_read_in_one_call_and_examined_as_file_by_file(
    tmp_path: Path, usage: UsageProcessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    paths = write_files(
        root / "alice" / "-proj",
        {
            "a.jsonl": b"\n".join(usage_lines()[:30]) + b"\n",
            "partial.jsonl": usage_lines()[30] + b"\n" + usage_lines()[31][:20],
        },
    )
    (root / "alice" / "-proj" / "fifo.jsonl").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "alice" / "-proj" / "fifo.jsonl")
    files = [session_file(path, root) for path in [*paths, root / "alice" / "-proj" / "fifo.jsonl"]]
    calls: list[int] = []
    offered = usage.read_and_process

    def counted(sessions: Sequence[SessionFile]) -> Sequence[ReadAndProcessed] | None:
        calls.append(len(sessions))
        return offered(sessions)

    monkeypatch.setattr(usage, "read_and_process", counted)
    together = chunk_outcomes(usage, files)
    assert calls == [3]
    monkeypatch.setattr(usage, "read_and_process", lambda sessions: None)
    assert together == chunk_outcomes(usage, files)
    assert [found[1] for found in together] == [  # type: ignore[index]
        work.Outcome.PROCESSED,
        work.Outcome.PROCESSED,
        work.Outcome.NOT_A_FILE,
    ]

    def failing(sessions: Sequence[SessionFile]) -> None:
        raise RuntimeError("a callback failed")

    monkeypatch.setattr(usage, "read_and_process", failing)  # the chunk is then read file by file
    assert chunk_outcomes(usage, files) == together
    monkeypatch.setattr(usage, "read_and_process", lambda sessions: offered(sessions)[:-1])  # one short
    assert chunk_outcomes(usage, files) == together
