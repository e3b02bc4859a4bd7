"""Bad input never crashes a run or loses data: every oddity is counted, every valid session is processed.

One generated corpus is spoiled in every way a sessions volume can be: a line still being written,
invalid JSON, invalid UTF-8, a 20 MB line, fields of the wrong type, an empty file, files that are not
transcripts, symlink loops, a file the runner may not read, and a file deleted between the scan and
its read. One ``sessionpipe run --processor usage`` over it must exit 0, count each case in the
summary's ``issues``, and store the rows of every valid usage line of every readable session — which
the test counts itself from the files.

Two parts need the real operating system to cooperate:

- unreadable: the file has mode 000 and the runner runs (as root, in CI) without the capabilities
  that let root ignore file modes (``setpriv`` drops ``CAP_DAC_OVERRIDE`` and
  ``CAP_DAC_READ_SEARCH``); a probe under the same ``setpriv`` checks the file really is unreadable;
- deleted between scan and read: the runner process is started through a small wrapper that deletes
  one session file while the usage processor handles an earlier one (keys are processed in sorted
  order), so the deletion happens after the scan listed the file and before the runner reads it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb

from sessionpipe_contract import EXIT_OK
from sessionpipe_demo import generate_corpus
from tests.runner_support import run_summary, sessionpipe_env

DROP_FILE_MODE_OVERRIDE = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]

#: Starts the CLI after wrapping the usage processor so that handling one session deletes another.
DELETING_WRAPPER = """
import os, sys
from pathlib import Path
from sessionpipe_runner.processors.usage import UsageProcessor
from sessionpipe_runner.cli import main

original = UsageProcessor.process

def process(self, session, data):
    if session.key == os.environ["BAD_INPUT_TRIGGER"]:
        Path(os.environ["BAD_INPUT_DOOMED"]).unlink()
    return original(self, session, data)

UsageProcessor.process = process
sys.exit(main(sys.argv[1:]))
"""

HUGE_LINE_BYTES = 20 * 1024 * 1024


def without_file_mode_override() -> list[str]:
    """The command prefix under which even root cannot read a mode-000 file."""
    if os.geteuid() != 0:
        return []
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed to run the runner without root's file-mode override"
    return DROP_FILE_MODE_OVERRIDE


def usage_lines(data: bytes) -> int:
    """How many lines carry ``message.usage`` as an object: what a session must contribute as rows."""
    count = 0
    for raw in data.split(b"\n"):
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        message = record.get("message") if isinstance(record, dict) else None
        count += isinstance(message, dict) and isinstance(message.get("usage"), dict)
    return count


def assistant_line(**overrides: Any) -> bytes:
    record: dict[str, Any] = {
        "parentUuid": None,
        "isSidechain": False,
        "cwd": "/home/alice/src/app",
        "sessionId": "bad-input",
        "version": "2.0.30",
        "message": {
            "id": "msg_bad",
            "model": "claude-sonnet-4-5-20250929",
            "role": "assistant",
            "content": [{"type": "text", "text": "ok"}],
            "usage": {"input_tokens": 3, "output_tokens": 5},
        },
        "requestId": "req_bad",
        "type": "assistant",
        "uuid": "0b6f8a3c-4a8e-4c59-9d8e-000000000001",
        "timestamp": "2025-12-01T10:00:00.000Z",
    }
    record.update(overrides)
    return json.dumps(record, separators=(",", ":")).encode()


def insert_line(path: Path, line: bytes) -> None:
    """Put ``line`` in the middle of a session file, between two complete lines."""
    lines = path.read_bytes().split(b"\n")
    middle = max(1, len(lines) // 2)
    path.write_bytes(b"\n".join([*lines[:middle], line, *lines[middle:]]))


def test_a_spoiled_volume_is_processed_and_every_oddity_counted(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    generate_corpus(sessions, users=2, target_bytes=1_500_000, seed=5)
    files = sorted(sessions.rglob("*.jsonl"))
    keys = {path: path.relative_to(sessions).as_posix() for path in files}
    main_files = [path for path in files if len(path.relative_to(sessions).parts) == 3]
    assert len(main_files) >= 12
    truncated, bad_json, bad_utf8, huge, wrong_types, *_ = main_files
    trigger, doomed = files[0], files[-1]  # processed first, read last
    assert doomed not in (truncated, bad_json, bad_utf8, huge, wrong_types)
    expected_rows = {keys[path]: usage_lines(path.read_bytes()) for path in files if path != doomed}

    # a line still being written
    with truncated.open("ab") as handle:
        handle.write(assistant_line()[:90])
    insert_line(bad_json, b'{"type":"assistant","message":{"id":"msg_x","usage":{"input_tokens":5,}},"timestamp":"')
    insert_line(bad_utf8, assistant_line().replace(b'"text":"ok"', b'"text":"caf\xe9 \xff"'))
    huge_text = "x" * HUGE_LINE_BYTES
    insert_line(huge, assistant_line(message={"id": "msg_huge", "model": "m", "content": huge_text, "usage": {}}))
    insert_line(wrong_types, assistant_line(message={"id": "msg_s", "model": "m", "usage": "lots"}))
    insert_line(wrong_types, assistant_line(message={"id": "msg_i", "model": "m", "usage": {"input_tokens": "12"}}))
    # a message that is a list holds no message.usage object: a line without usage, ignored as such
    insert_line(wrong_types, assistant_line(message=[{"usage": {"input_tokens": 12}}]))
    project = main_files[0].parent
    (project / "empty-session.jsonl").write_bytes(b"")
    expected_rows[keys[main_files[0]].rsplit("/", 1)[0] + "/empty-session.jsonl"] = 0
    (project / "notes.txt").write_text("not a transcript")
    (project / f"{main_files[0].name}.bak").write_bytes(main_files[0].read_bytes())
    (sessions / "bob" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (sessions / "README.md").write_text("transcripts live in <user>/<project>/<session>.jsonl\n")
    (project / "parent-loop").symlink_to("..", target_is_directory=True)
    (project / "loop-a.jsonl").symlink_to("loop-b.jsonl")
    (project / "loop-b.jsonl").symlink_to("loop-a.jsonl")
    locked = sessions / "bob" / "locked-project" / "locked-session.jsonl"
    locked.parent.mkdir()
    locked.write_bytes(assistant_line() + b"\n")
    locked.chmod(0o000)

    prefix = without_file_mode_override()
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", f"open({str(locked)!r}, 'rb')"], capture_output=True, text=True, check=False
    )
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, "the locked file is readable to the runner"

    db = tmp_path / "usage.duckdb"
    env = sessionpipe_env(BAD_INPUT_TRIGGER=keys[trigger], BAD_INPUT_DOOMED=str(doomed))
    command = [*prefix, sys.executable, "-c", DELETING_WRAPPER]
    command += ["run", "--processor", "usage", "--sessions", str(sessions), "--db", str(db), "--json"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert not doomed.exists(), "the wrapper did not delete the doomed file"
    summary = run_summary(result)
    assert result.returncode == EXIT_OK, result.stderr
    assert summary["outcome"] == "succeeded" and summary["errors"] == 0, summary

    assert summary["issues"] == {
        "incomplete_last_line": 1,
        "invalid_json": 1,
        "invalid_utf8": 1,
        "line_too_long": 1,
        "wrong_type": 2,
        "empty_file": 1,
        "not_jsonl": 4,  # notes.txt, the .bak copy, .DS_Store, README.md at the top
        "symlinked_dir_skipped": 1,
        "symlink_skipped": 2,  # the two links of a loop: no symlink below the root is followed
        "unreadable": 1,
        "vanished": 1,
    }
    valid = len(expected_rows)
    assert summary["scanned"] == valid + 2  # + the locked and the doomed file
    assert summary["processed"] == valid
    assert summary["skipped"] == 2

    con = duckdb.connect(str(db), read_only=True)
    try:
        stored = dict(con.execute("SELECT session_file, count(*) FROM usage_rows GROUP BY ALL").fetchall())
        done = dict(con.execute("SELECT session_file, status FROM session_processor_state").fetchall())
    finally:
        con.close()
    assert {key: count for key, count in expected_rows.items() if count} == stored
    assert done == dict.fromkeys(expected_rows, "done")  # the locked and the vanished file wait for a later run
