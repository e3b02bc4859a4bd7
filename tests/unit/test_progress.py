"""Progress of a run: the accounting and its formats (pure), and where a run shows it.

A run over the real sniffly corpus reports every candidate once; without a terminal it logs a line
every few seconds, as JSON when ``SESSIONPIPE_LOG_FORMAT=json``; on a cluster lease the numbers ride
on the renewals as the ``sessionpipe.io/progress`` annotation, and the release drops them.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sessionpipe_contract import ANNOTATION_PROGRESS, EXIT_OK, EXIT_USAGE
from sessionpipe_runner import cli
from sessionpipe_runner.lease.file import FileLease
from sessionpipe_runner.lease.k8s import KubernetesLease
from sessionpipe_runner.processors.usage import UsageProcessor
from sessionpipe_runner.progress import (
    Progress,
    ProgressLog,
    TerminalBar,
    bar_text,
    human_bytes,
    human_duration,
    summary_text,
)
from sessionpipe_runner.runner import RunSettings, run
from tests.runner_support import CORPUS

SNIFFLY = CORPUS / "sniffly/projects"


def progress(files_done: int = 0, bytes_done: int = 0) -> Progress:
    return Progress(
        "usage", files_total=5000, bytes_total=50_000_000, started=100.0, files_done=files_done, bytes_done=bytes_done
    )


def test_rate_and_eta_follow_the_bytes_done_so_far() -> None:
    done = progress(files_done=1234, bytes_done=10_000_000)
    assert done.rate(110.0) == pytest.approx(1_000_000)
    assert done.eta_seconds(110.0) == pytest.approx(40.0)
    assert progress().eta_seconds(110.0) is None  # no rate yet: no guess
    assert progress().rate(100.0) == 0.0


def test_summary_line_has_files_bytes_rate_and_eta() -> None:
    text = summary_text(progress(files_done=1234, bytes_done=10_000_000), 110.0)
    assert text == "1,234/5,000 files, 10.0 MB/50.0 MB, 1.0 MB/s, ETA 0:40"


def test_bar_fills_by_bytes_and_the_units_read_well() -> None:
    half = bar_text(progress(files_done=10, bytes_done=25_000_000), 110.0, width=10)
    assert half.startswith("usage [#####.....]  50% 10/5,000 files")
    assert human_bytes(999) == "999 B" and human_bytes(1500) == "1.5 kB" and human_bytes(2.5e9) == "2.5 GB"
    assert human_duration(3725) == "1:02:05" and human_duration(None) == "?"
    nothing = Progress("usage", files_total=0, bytes_total=0, started=0.0)
    assert "100%" in bar_text(nothing, 1.0)


def test_the_annotation_is_compact_json_the_operator_reads() -> None:
    value = json.loads(progress(files_done=3, bytes_done=7).annotation())
    assert value == {"processor": "usage", "filesDone": 3, "filesTotal": 5000, "bytesDone": 7, "bytesTotal": 50_000_000}


def test_log_lines_are_throttled_and_carry_the_numbers(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    shown = ProgressLog(clock=lambda: now[0], every=5.0)
    done = progress()
    with caplog.at_level(logging.INFO, logger="sessionpipe_runner.progress"):
        for second in range(12):
            now[0] = 100.0 + second
            done.advance(1000)
            shown(done)
    lines = [record for record in caplog.records if record.name == "sessionpipe_runner.progress"]
    assert len(lines) == 3  # at 0, 5 and 10 seconds
    assert lines[-1].getMessage().startswith("progress: 11/5,000 files")
    assert lines[-1].__dict__["progress"]["files_done"] == 11


def test_the_json_log_format_writes_progress_as_fields() -> None:
    record = logging.LogRecord("sessionpipe_runner.progress", logging.INFO, __file__, 1, "progress: %s", ("x",), None)
    record.progress = progress(files_done=2, bytes_done=5).fields(110.0)
    line = json.loads(cli.JsonLogFormatter().format(record))
    assert line["message"] == "progress: x" and line["level"] == "info"
    assert line["files_done"] == 2 and line["files_total"] == 5000 and line["bytes_done"] == 5
    assert line["time"].endswith("Z")


def test_an_unknown_log_format_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("SESSIONPIPE_LOG_FORMAT", "yaml")
    assert cli.main(["processors"]) == EXIT_USAGE
    assert "SESSIONPIPE_LOG_FORMAT='yaml'" in capsys.readouterr().err
    assert cli.log_format({"SESSIONPIPE_LOG_FORMAT": "JSON"}) == "json"
    assert cli.log_format({}) == "plain"


def test_the_terminal_bar_redraws_in_place_and_is_erased_at_the_end() -> None:
    stream = io.StringIO()
    now = [0.0]
    bar = TerminalBar(stream, clock=lambda: now[0])
    done = Progress("usage", files_total=2, bytes_total=20, started=0.0)
    bar(done)
    now[0] = 0.05
    done.advance(10)
    bar(done)  # within the redraw interval: skipped
    now[0] = 0.1
    done.advance(10)
    bar(done)  # the last file is always drawn
    bar.close()
    frames = stream.getvalue().split("\r\x1b[2K")
    assert frames[0] == "" and frames[-1] == ""
    assert [frame.split("] ")[1][:4] for frame in frames[1:-1]] == ["  0%", "100%"]


def test_a_run_reports_every_candidate_once_and_ends_at_the_totals(tmp_path: Path) -> None:
    db = tmp_path / "usage.duckdb"
    seen: list[tuple[int, int, int, int]] = []

    def record(p: Progress) -> None:
        seen.append((p.files_done, p.files_total, p.bytes_done, p.bytes_total))

    settings = RunSettings(processor="usage", sessions=SNIFFLY, database=db, user="chip", lease_wait_seconds=5)
    summary = run(settings, UsageProcessor(), FileLease(db, "usage"), record)
    assert summary.exit_code == EXIT_OK
    files = sorted(SNIFFLY.rglob("*.jsonl"))
    total_bytes = sum(path.stat().st_size for path in files)
    assert seen[0] == (0, len(files), 0, total_bytes)  # announced before the first file
    assert seen[-1] == (len(files), len(files), total_bytes, total_bytes)
    assert [done for done, *_ in seen] == list(range(len(files) + 1))

    seen.clear()  # a second run has nothing to read: one report, already complete
    assert run(settings, UsageProcessor(), FileLease(db, "usage"), record).exit_code == EXIT_OK
    assert seen == [(0, 0, 0, 0)]


def test_a_failing_progress_display_is_counted_and_never_fails_the_run(tmp_path: Path) -> None:
    db = tmp_path / "usage.duckdb"

    def broken(_: Progress) -> None:
        raise OSError("terminal closed")

    settings = RunSettings(processor="usage", sessions=SNIFFLY, database=db, user="chip", lease_wait_seconds=5)
    summary = run(settings, UsageProcessor(), FileLease(db, "usage"), broken)
    assert summary.exit_code == EXIT_OK and summary.processed > 0
    assert summary.issues["progress_not_shown"] == 1


class FakeLeaseApi:
    """Records the Lease bodies written; every write succeeds with a new resourceVersion."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def replace_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        self.bodies.append(body)
        meta = type("Meta", (), {"resource_version": str(len(self.bodies))})()
        return type("Lease", (), {"metadata": meta})()


def test_the_cluster_lease_carries_progress_on_renewals_and_drops_it_on_release() -> None:
    lease = KubernetesLease("db", "ns", "pod-1", None, duration_seconds=30)
    api = FakeLeaseApi()
    lease._api = api
    lease._resource_version, lease._acquired, lease._valid_until = "1", "2026-01-01T00:00:00.000000Z", 1e18
    assert lease._renew_once()
    assert "annotations" not in api.bodies[-1]["metadata"]  # nothing published yet
    lease.publish_progress(progress(files_done=1234).annotation())
    assert lease._renew_once()
    annotations = api.bodies[-1]["metadata"]["annotations"]
    assert json.loads(annotations[ANNOTATION_PROGRESS])["filesDone"] == 1234
    lease.release()
    assert "annotations" not in api.bodies[-1]["metadata"]
    assert "holderIdentity" not in api.bodies[-1]["spec"]


def test_the_run_command_publishes_progress_on_a_cluster_lease_only(tmp_path: Path) -> None:
    from sessionpipe_runner.commands.run import progress_reporter

    shown: list[Progress] = []
    cluster = KubernetesLease("db", "ns", "pod-1", None, duration_seconds=30)
    report = progress_reporter(shown.append, cluster)
    report(progress(files_done=7))
    assert json.loads(cluster._progress or "{}")["filesDone"] == 7 and len(shown) == 1
    progress_reporter(shown.append, FileLease(tmp_path / "db.duckdb", "usage"))(progress(files_done=8))
    assert len(shown) == 2
