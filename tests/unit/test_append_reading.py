"""Reading a grown file: the committed prefix is recognised by its hash, and only then skipped."""

from __future__ import annotations

from pathlib import Path

import xxhash

from sessionpipe_runner.reading import Committed, read_snapshot

FIRST = b'{"n": 1}\n{"n": 2}\n'
MORE = b'{"n": 3}\n{"n": 4}\n'


def committed_of(data: bytes) -> Committed:
    return Committed(content_hash=xxhash.xxh3_128_hexdigest(data), length=len(data), lines=data.count(b"\n"))


def test_a_file_grown_behind_its_committed_prefix_is_read_from_the_prefix_end(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(FIRST + MORE + b'{"n": 5')  # and a last line still being written
    snapshot = read_snapshot(path, committed=committed_of(FIRST))
    assert snapshot.appended_from == len(FIRST)
    assert snapshot.first_line == 3
    assert snapshot.appended == MORE
    assert snapshot.content_hash == xxhash.xxh3_128_hexdigest(FIRST + MORE)  # the whole complete lines'
    assert (snapshot.length, snapshot.lines, snapshot.partial_tail) == (len(FIRST + MORE), 4, True)


def test_a_rewritten_prefix_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(FIRST.replace(b"1", b"9") + MORE)  # same length, one byte changed
    snapshot = read_snapshot(path, committed=committed_of(FIRST))
    assert snapshot.appended_from == 0
    assert snapshot.appended == FIRST.replace(b"1", b"9") + MORE
    assert snapshot.first_line == 1


def test_a_shrunk_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(FIRST[:9])
    assert read_snapshot(path, committed=committed_of(FIRST)).appended_from == 0


def test_a_prefix_that_ends_inside_a_line_is_read_whole(tmp_path: Path) -> None:
    """A last line committed without its newline: what is appended may continue it."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(FIRST + b'{"n": 3}\n')
    prefix = FIRST + b'{"n": 3}'
    snapshot = read_snapshot(path, committed=committed_of(prefix))
    assert snapshot.appended_from == 0
    assert snapshot.lines == 3


def test_without_a_committed_prefix_the_whole_file_is_given(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(FIRST + MORE)
    snapshot = read_snapshot(path)
    assert (snapshot.appended_from, snapshot.first_line, snapshot.appended) == (0, 1, FIRST + MORE)


def test_a_snapshot_without_its_bytes_keeps_everything_else() -> None:
    """``without_data`` builds the snapshot field by field: a field added later must not be lost."""
    import dataclasses

    from sessionpipe_runner.reading import Snapshot

    values: dict[str, object] = {}
    for number, field in enumerate(dataclasses.fields(Snapshot), start=2):
        values[field.name] = {"data": b"lines\n", "partial_tail": True, "content_hash": "h"}.get(field.name, number)
    snapshot = Snapshot(**values)  # type: ignore[arg-type]
    assert dataclasses.asdict(snapshot.without_data()) == {**values, "data": b""}
