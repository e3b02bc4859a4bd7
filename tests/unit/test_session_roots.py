"""Several sessions roots in one run: ``--sessions`` repeated, and the Claude folders ccusage reads by default.

Keys do not name the root (a file's key is the one a scan of its root alone gives), so they stay
stable when a root is added; the same key in two roots is one copied session, read once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from sessionpipe_contract import EXIT_OK
from sessionpipe_runner.cli import main
from sessionpipe_runner.scan import scan_roots, scan_sessions
from sessionpipe_runner.settings import UsageError, run_settings
from tests.runner_support import CORPUS

SNIFFLY = CORPUS / "sniffly/projects"
FIXTURES = CORPUS / "ccusage-fixtures/projects"


def place(root: Path, key: str, data: bytes) -> None:
    target = root / key
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def test_the_same_file_in_two_roots_is_read_once_the_largest_copy(tmp_path: Path) -> None:
    old, new = tmp_path / "dot-claude", tmp_path / "config-claude"
    place(old, "-home-bob-app/s1.jsonl", b'{"a": 1}\n')
    place(new, "-home-bob-app/s1.jsonl", b'{"a": 1}\n{"b": 2}\n')  # the session went on after the move
    place(old, "-home-bob-app/s0.jsonl", b"{}\n")
    place(new, "-home-bob-lib/s2.jsonl", b"{}\n")

    scan = scan_roots([old, new], "bob")
    by_key = {file.key: file for file in scan.files}
    assert set(by_key) == {"bob/-home-bob-app/s1.jsonl", "bob/-home-bob-app/s0.jsonl", "bob/-home-bob-lib/s2.jsonl"}
    assert by_key["bob/-home-bob-app/s1.jsonl"].location == str(new / "-home-bob-app/s1.jsonl")
    assert scan.issues["duplicate_in_other_root"] == 1
    # each file keeps the key a scan of its own root gives it
    alone = {file.key for file in scan_sessions(old, "bob").files} | {f.key for f in scan_sessions(new, "bob").files}
    assert alone == set(by_key)


def run_args(**overrides: object) -> argparse.Namespace:
    fields: dict[str, object] = dict.fromkeys(
        ("processor", "sessions", "user", "db", "lease", "lease_wait", "max_sessions", "max_attempts", "workers"),
    )
    fields.update(db_memory=None, config=None, termination_log=None, processor="usage")
    fields.update(overrides)
    return argparse.Namespace(**fields)


def test_sessions_given_twice_are_both_read(tmp_path: Path) -> None:
    settings = run_settings(run_args(sessions=[SNIFFLY, FIXTURES, SNIFFLY]), {})
    assert settings.session_roots == (SNIFFLY, FIXTURES)  # a root named twice is read once


def test_by_default_both_claude_folders_are_read_as_this_users(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config, legacy = home / ".config/claude/projects", home / ".claude/projects"
    config.mkdir(parents=True)
    legacy.mkdir(parents=True)
    environ = {"HOME": str(home), "USER": "bob"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        settings = run_settings(run_args(), environ)
    assert (settings.session_roots, settings.user) == ((config, legacy), "bob")


def test_claude_config_dir_names_the_folders_as_a_comma_list(tmp_path: Path) -> None:
    first, second = tmp_path / "work-claude", tmp_path / "home-claude"
    (first / "projects").mkdir(parents=True)
    (second / "projects").mkdir(parents=True)
    environ = {"CLAUDE_CONFIG_DIR": f"{first}, {second},{tmp_path / 'none'}", "USER": "bob"}
    settings = run_settings(run_args(), environ)
    assert settings.session_roots == (first / "projects", second / "projects")
    with pytest.raises(UsageError, match="CLAUDE_CONFIG_DIR"):
        run_settings(run_args(), {"CLAUDE_CONFIG_DIR": str(tmp_path / "none")})


def test_one_run_over_two_roots_processes_the_files_of_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--processor", "usage", "--user", "bob", "--json", "--db", str(tmp_path / "u.duckdb")]
    code = main([*argv, "--sessions", str(SNIFFLY), "--sessions", str(FIXTURES)])
    assert code == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    expected = len(scan_sessions(SNIFFLY, "bob").files) + len(scan_sessions(FIXTURES, "bob").files)
    assert summary["scanned"] == expected and summary["processed"] == expected
