"""The single-writer Kubernetes Lease, on the real API server: exclusion, expiry, fencing, release.

Runners here run outside a pod, as a laptop user would run them against a cluster: the current
kubeconfig, ``--lease-namespace``, and host name plus process id as the holder.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from sessionpipe_contract import EXIT_LEASE_LOST, EXIT_OK, EXIT_TERMINATED
from sessionpipe_kubetest.waiting import wait_for
from tests.runner_support import REPO, finish, install_test_plugin, run_summary, sessionpipe_env, start_sessionpipe

pytestmark = pytest.mark.cluster

DURATION = 6  # seconds; the renew deadline is two thirds of it


def _sessions(root: Path, count: int) -> Path:
    for number in range(count):
        path = root / "alice" / "-work-app" / f"s{number:02d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"n": number, "line": k}) + "\n" for k in range(3)))
    return root


@pytest.fixture
def lease_env(control_plane: Any, tmp_path: Path) -> dict[str, str]:
    env = sessionpipe_env(install_test_plugin(tmp_path / "site"))
    env.update({k: v for k, v in control_plane.env().items() if k in ("KUBECONFIG", "PATH")})
    env.pop("POD_NAME", None)
    env.pop("POD_NAMESPACE", None)
    return env


def _start_run(
    env: dict[str, str], namespace: str, sessions: Path, db: Path, lease: str, *extra: str, **knobs: str
) -> subprocess.Popen[str]:
    return start_sessionpipe(
        "run",
        "--processor",
        "lines",
        "--sessions",
        sessions,
        "--db",
        db,
        "--lease",
        f"k8s:{lease}",
        "--lease-namespace",
        namespace,
        "--lease-duration",
        str(DURATION),
        "--json",
        *extra,
        env={**env, **knobs},
    )


def _first_stderr_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The first line a started run writes on stderr (its lease-wait notice), waiting at most ``timeout``."""
    stderr = process.stderr
    assert stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stderr.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert lines, f"no line on stderr within {timeout:.0f}s"
    return lines[0]


def _lease(control_plane: Any, namespace: str, name: str) -> dict[str, Any] | None:
    result = control_plane.kubectl("get", "lease", name, "-o", "json", namespace=namespace, check=False)
    if result.returncode != 0:
        return None
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def _holder_of(process: subprocess.Popen[str]) -> str:
    return f"{socket.gethostname()}-{process.pid}"


def _held_by(control_plane: Any, namespace: str, name: str, holder: str) -> Callable[[], dict[str, Any] | None]:
    """A check returning the Lease while ``holder`` holds it (a short run may release it soon after)."""

    def check() -> dict[str, Any] | None:
        lease = _lease(control_plane, namespace, name)
        return lease if lease and lease["spec"].get("holderIdentity") == holder else None

    return check


def _state_times(db: Path) -> list[datetime]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [row[0] for row in con.execute("SELECT processed_at FROM session_processor_state").fetchall()]
    finally:
        con.close()


def _epochs(db: Path) -> list[tuple[int, str, datetime]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT epoch, holder, acquired_at FROM writer_epochs ORDER BY epoch").fetchall()
    finally:
        con.close()
    return [(int(epoch), str(holder), acquired) for epoch, holder, acquired in rows]


def test_four_contenders_never_overlap_and_epochs_only_grow(
    control_plane: Any, namespace: str, lease_env: dict[str, str], tmp_path: Path
) -> None:
    sessions = _sessions(tmp_path / "sessions", 2)
    db = tmp_path / "shared.duckdb"
    rounds = 25
    contenders = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.lease_contender",
                "--name",
                f"contender-{number}",
                "--lease",
                "shared-db",
                "--namespace",
                namespace,
                "--sessions",
                str(sessions),
                "--db",
                str(db),
                "--rounds",
                str(rounds),
                "--duration",
                "3",
            ],
            env=lease_env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for number in range(4)
    ]
    reports: list[dict[str, Any]] = []
    for contender in contenders:
        stdout, stderr = contender.communicate(timeout=400)
        assert contender.returncode == 0, stderr
        reports += [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]

    assert len(reports) == 4 * rounds
    assert all(report["exit_code"] == EXIT_OK for report in reports), [r for r in reports if r["exit_code"]]
    # Critical sections as the contenders saw them (one machine, one clock): never overlapping,
    # and a later section always has a larger epoch.
    sections = sorted((report["held"][0], report["held"][1], report["epoch"]) for report in reports)
    for (_, end, epoch), (start, _, next_epoch) in itertools.pairwise(sections):
        assert end <= start, f"sections overlap: one ended at {end}, the next began at {start}"
        assert next_epoch > epoch
    # Every section is recorded in the database, in the same order.
    con = duckdb.connect(str(db), read_only=True)
    runs = con.execute(
        "SELECT r.writer_epoch, e.acquired_at, r.finished_at, r.outcome FROM processor_runs r "
        "JOIN writer_epochs e ON e.epoch = r.writer_epoch ORDER BY r.writer_epoch"
    ).fetchall()
    lines = con.execute("SELECT count(*) FROM line_rows WHERE session_file LIKE '%contenders%'").fetchone()
    con.close()
    assert len(runs) == 4 * rounds
    assert {outcome for *_, outcome in runs} == {"succeeded"}
    assert sorted(epoch for epoch, *_ in runs) == sorted(report["epoch"] for report in reports)
    for (_, _, finished, _), (_, acquired, _, _) in itertools.pairwise(runs):
        assert finished <= acquired
    assert lines is not None and lines[0] == 4 * rounds  # each contender's file has one line per round


def test_a_killed_holder_is_succeeded_only_after_the_lease_duration(
    control_plane: Any, namespace: str, lease_env: dict[str, str], tmp_path: Path
) -> None:
    sessions = _sessions(tmp_path / "sessions", 30)
    db = tmp_path / "db.duckdb"
    first = _start_run(lease_env, namespace, sessions, db, "killed", TESTPLUGIN_SLEEP="1", TESTPLUGIN_BATCHABLE="0")
    wait_for(_held_by(control_plane, namespace, "killed", _holder_of(first)), 30, "the first run to hold the lease")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.time()
    # Slow enough that the Lease is seen while held.
    second = _start_run(
        lease_env,
        namespace,
        sessions,
        db,
        "killed",
        "--lease-wait",
        "60",
        TESTPLUGIN_SLEEP="0.1",
        TESTPLUGIN_BATCHABLE="0",
    )
    acquired = wait_for(
        _held_by(control_plane, namespace, "killed", _holder_of(second)), 60, "the second run to take over"
    )
    acquire_time = datetime.fromisoformat(acquired["spec"]["acquireTime"].replace("Z", "+00:00")).timestamp()
    result = finish(second)
    assert result.returncode == EXIT_OK, result.stderr
    waited = acquire_time - killed_at
    assert waited >= DURATION, f"took over {waited:.2f}s after the kill, before the {DURATION}s lease ran out"
    assert waited < DURATION + 4, f"took over only {waited:.2f}s after the kill"


def test_a_frozen_holder_detects_the_loss_and_writes_nothing_after_the_newer_epoch(
    control_plane: Any, namespace: str, lease_env: dict[str, str], tmp_path: Path
) -> None:
    sessions = _sessions(tmp_path / "sessions", 24)
    db = tmp_path / "db.duckdb"
    frozen = _start_run(lease_env, namespace, sessions, db, "frozen", TESTPLUGIN_SLEEP="0.5", TESTPLUGIN_BATCHABLE="0")
    wait_for(_held_by(control_plane, namespace, "frozen", _holder_of(frozen)), 30, "the first run to hold the lease")
    time.sleep(2)  # let it commit a few sessions
    frozen.send_signal(signal.SIGSTOP)
    successor = _start_run(lease_env, namespace, sessions, db, "frozen", "--lease-wait", "90")
    wait_for(_held_by(control_plane, namespace, "frozen", _holder_of(successor)), 60, "the successor to take over")
    frozen.send_signal(signal.SIGCONT)
    late = finish(frozen)
    done = finish(successor, timeout=120)

    assert late.returncode == EXIT_LEASE_LOST, late.stderr
    assert done.returncode == EXIT_OK, done.stderr
    late_summary, done_summary = run_summary(late), run_summary(done)
    assert "lease" in late_summary["message"]
    # The database proves the deposed writer wrote nothing after the successor's epoch began: every
    # session it committed is older than that epoch, and everything newer is the successor's.
    epochs = _epochs(db)
    assert [holder for _, holder, _ in epochs] == [_holder_of(frozen), _holder_of(successor)]
    assert epochs[0][0] < epochs[1][0]
    successor_began = epochs[1][2]
    times = _state_times(db)
    assert len(times) == 24
    assert sum(t < successor_began for t in times) == late_summary["processed"] > 0
    assert sum(t > successor_began for t in times) == done_summary["processed"]


def test_sigterm_releases_the_lease_and_the_next_run_starts_at_once(
    control_plane: Any, namespace: str, lease_env: dict[str, str], tmp_path: Path
) -> None:
    sessions = _sessions(tmp_path / "sessions", 30)
    db = tmp_path / "db.duckdb"
    first = _start_run(lease_env, namespace, sessions, db, "term", TESTPLUGIN_SLEEP="1", TESTPLUGIN_BATCHABLE="0")
    wait_for(_held_by(control_plane, namespace, "term", _holder_of(first)), 30, "the first run to hold the lease")
    waiting = _start_run(
        lease_env,
        namespace,
        sessions,
        db,
        "term",
        "--lease-wait",
        "60",
        TESTPLUGIN_SLEEP="0.1",
        TESTPLUGIN_BATCHABLE="0",
    )
    # Only once the second run polls the held lease does the release test anything (a fixed sleep
    # raced a busy machine, where the second interpreter may not even have started in 2 s).
    said = _first_stderr_line(waiting, 60)
    assert f"is held by {_holder_of(first)}" in said, said
    first.send_signal(signal.SIGTERM)
    terminated = finish(first)
    released_at = time.time()
    assert terminated.returncode == EXIT_TERMINATED, terminated.stderr
    lease = wait_for(
        _held_by(control_plane, namespace, "term", _holder_of(waiting)), 10, "the waiting run to take over"
    )
    acquired = datetime.fromisoformat(lease["spec"]["acquireTime"].replace("Z", "+00:00")).timestamp()
    assert acquired - released_at < 1.0, f"the next run took {acquired - released_at:.2f}s to start"
    assert finish(waiting).returncode == EXIT_OK


def test_a_holder_cut_off_from_the_api_server_stops_writing_at_its_renew_deadline(
    control_plane: Any, namespace: str, lease_env: dict[str, str], tmp_path: Path
) -> None:
    sessions = _sessions(tmp_path / "sessions", 40)
    db = tmp_path / "db.duckdb"
    holder = _start_run(lease_env, namespace, sessions, db, "cutoff", TESTPLUGIN_SLEEP="0.3", TESTPLUGIN_BATCHABLE="0")
    wait_for(_held_by(control_plane, namespace, "cutoff", _holder_of(holder)), 30, "the run to hold the lease")
    time.sleep(1)
    control_plane.stop_apiserver()
    stopped_at = time.time()
    try:
        result = finish(holder, timeout=60)
    finally:
        control_plane.start_apiserver()
    assert result.returncode == EXIT_LEASE_LOST, result.stderr
    summary = run_summary(result)
    assert "renew deadline" in summary["message"]
    times = [t.timestamp() for t in _state_times(db)]
    assert 0 < len(times) < 40
    # The last renewal started before the stop; two thirds of the duration later the writes end.
    renew_deadline = DURATION * 2 / 3
    assert max(times) <= stopped_at + renew_deadline + 0.5


def test_a_forbidden_lease_is_a_clear_error(
    control_plane: Any, namespace: str, lease_env: dict[str, str], tmp_path: Path
) -> None:
    """A service account without the Role cannot take the lease; the run says what is missing."""
    control_plane.kubectl("create", "serviceaccount", "no-leases", namespace=namespace)
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "no-leases")
    sessions = _sessions(tmp_path / "sessions", 1)
    env = {**lease_env, "KUBECONFIG": str(kubeconfig)}
    process = _start_run(env, namespace, sessions, tmp_path / "db.duckdb", "forbidden", "--lease-wait", "5")
    result = finish(process)
    assert result.returncode != EXIT_OK
    assert "leases.coordination.k8s.io" in result.stdout + result.stderr
    assert not (tmp_path / "db.duckdb").exists()
