"""The kubelet's rules the executor copies: termination messages, exit codes, image names.

Each is what a test on the real control plane reads back from a pod's status, checked here without
one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionpipe_kubetest.executor import PodExecutor, exit_code_of, termination_message


def never_read() -> bytes:
    raise AssertionError("the log must not be read")


def test_a_termination_message_file_is_cut_at_four_kibibytes() -> None:
    assert termination_message(b"x" * 5000, None, True, never_read) == "x" * 4096


def test_the_log_tail_stands_in_only_for_an_empty_file_of_a_failed_fallback_container() -> None:
    log = b"".join(f"line {n}\n".encode() for n in range(200))
    assert termination_message(b"", "FallbackToLogsOnError", False, never_read) == ""
    assert termination_message(b"", "File", True, never_read) == ""
    assert termination_message(b"from file", "FallbackToLogsOnError", True, never_read) == "from file"
    tail = termination_message(b"", "FallbackToLogsOnError", True, lambda: log)
    assert tail.splitlines() == [f"line {n}" for n in range(120, 200)]  # the last 80 lines


def test_the_log_tail_is_cut_to_its_last_two_kibibytes() -> None:
    long_lines = b"".join(bytes([65 + n % 26]) * 99 + b"\n" for n in range(80))
    tail = termination_message(b"", "FallbackToLogsOnError", True, lambda: long_lines)
    assert tail.encode() == long_lines[-2048:]


@pytest.mark.parametrize(("returncode", "exit_code"), [(0, 0), (3, 3), (-9, 137), (-15, 143)])
def test_death_by_signal_reports_128_plus_the_signal(returncode: int, exit_code: int) -> None:
    assert exit_code_of(returncode) == exit_code


def test_a_registered_entrypoint_matches_every_tag_and_digest_of_its_image(tmp_path: Path) -> None:
    executor = PodExecutor("https://127.0.0.1:1", tmp_path / "ca.crt", tmp_path / "c", tmp_path / "k", tmp_path, 1)
    executor.register_image("registry.example:5000/team/job:1.0", ["job", "--flag"])
    assert executor.entrypoint_for("registry.example:5000/team/job:2.0") == ["job", "--flag"]
    assert executor.entrypoint_for("registry.example:5000/team/job@sha256:00ff") == ["job", "--flag"]
    assert executor.entrypoint_for("registry.example:5000/team/job:2.0@sha256:00ff") == ["job", "--flag"]
    assert executor.entrypoint_for("registry.example:5000/team/other:1.0") is None
