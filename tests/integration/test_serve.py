"""``sessionpipe serve``: its JSON equals the CLI's, its metrics sum to the report, it follows new
snapshots without blocking runs, and it answers bad input and a missing or damaged database in one line.

The database is built with the real runner from the shared corpora (read in place); most requests
go through Starlette's TestClient (the real app, no socket), one test through a real process.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from sessionpipe_runner.serve.app import create_app
from sessionpipe_runner.snapshot import snapshot_path
from tests.anthropic_replay import error_reply
from tests.runner_support import CORPUS, assert_same, run_summary
from tests.serve_support import (
    PAGE_PATHS,
    XSS_FOLDER,
    build_dashboard_db,
    cli_json,
    get,
    run_usage,
    run_verification,
    serving,
    write_hostile_sessions,
)

BYS = ("day", "week", "month", "session", "user", "project", "model", "block")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dashboard_db(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture(scope="module")
def client(db: Path) -> TestClient:
    return TestClient(create_app(db, default_tz="UTC"), raise_server_exceptions=False)


def api(client: TestClient, path: str, **params: Any) -> Any:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


@pytest.mark.parametrize("by", BYS)
def test_api_usage_equals_the_cli_for_every_grouping(db: Path, client: TestClient, by: str) -> None:
    theirs = cli_json("report", "usage", "--by", by, "--tz", "UTC", "--db", db)
    assert_same(api(client, "/api/usage", by=by, tz="UTC"), theirs, f"by={by}")


@pytest.mark.parametrize(
    "flags",
    [
        {"by": "day", "user": "sniffly", "tz": "Europe/Paris"},
        {"by": "session", "since": "2025-07-01", "until": "20250831", "tz": "America/New_York"},
        {"by": "week", "project": XSS_FOLDER, "tz": "UTC"},
        {"by": "model", "user": "claude-code-viewer", "tz": "Asia/Tokyo", "since": "2025-01-01"},
        {"by": "month", "model": "claude-sonnet-4-20250514", "tz": "UTC"},
    ],
)
def test_api_usage_equals_the_cli_with_filters(db: Path, client: TestClient, flags: dict[str, str]) -> None:
    argv = [part for name, value in flags.items() for part in (f"--{name}", value)]
    theirs = cli_json("report", "usage", *argv, "--db", db)
    ours = api(client, "/api/usage", **flags)
    assert_same(ours, theirs, str(flags))
    assert ours["totals"]["totalTokens"] > 0, "a filter that selects nothing proves little"


def test_api_verification_and_runs_equal_the_cli(db: Path, client: TestClient) -> None:
    verification = cli_json("report", "verification", "--db", db)
    assert api(client, "/api/verification") == verification
    assert verification["totals"]["items"] >= 1  # type: ignore[index]
    assert api(client, "/api/runs") == cli_json("status", "--db", db)


def test_metrics_usage_series_sum_to_the_reports_totals(db: Path, client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    tokens: dict[str, float] = defaultdict(float)
    cost = 0.0
    labels: set[tuple[str, ...]] = set()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "sessionpipe_usage_tokens_total":
                tokens[sample.labels["type"]] += sample.value
                labels.add(tuple(sorted(sample.labels)))
            elif sample.name == "sessionpipe_usage_cost_usd_total":
                cost += sample.value
                labels.add(tuple(sorted(sample.labels)))
    totals = cli_json("report", "usage", "--by", "user", "--db", db)["totals"]  # type: ignore[index]
    assert dict(tokens) == {
        "input": totals["inputTokens"],
        "output": totals["outputTokens"],
        "cache_creation": totals["cacheCreationTokens"],
        "cache_read": totals["cacheReadTokens"],
    }
    assert math.isclose(cost, totals["totalCost"], rel_tol=1e-9)
    assert labels == {("model", "type", "user"), ("model", "user")}, "projects must not be a label"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/api/usage?by=fortnight", "invalid choice: 'fortnight'"),
        ("/api/usage?since=2025-02-30", "is not a date"),
        ("/api/usage?until=yesterday", "is not a date"),
        ("/api/usage?tz=Mars/Olympus", "is not an IANA time zone"),
        ("/api/usage?since=2025-09-01&until=2025-08-01", "is after"),
        ("/api/usage?sql=select", "unknown parameter 'sql'"),
        ("/api/runs?by=day", "unknown parameter 'by'"),
        ("/?by=fortnight", "is not one of day, week, month"),
        ("/users?since=2025-13-01", "is not a date"),
        ("/blocks?tz=Not/AZone", "is not an IANA time zone"),
    ],
)
def test_bad_input_is_a_400_with_a_one_line_reason(client: TestClient, path: str, reason: str) -> None:
    response = client.get(path)
    assert response.status_code == 400
    assert reason in response.text
    assert "Traceback" not in response.text
    if path.startswith("/api/"):
        assert response.text.count("\n") == 1 and response.text.endswith("\n")


def test_every_page_renders_and_escapes_what_transcripts_say(client: TestClient) -> None:
    for path in PAGE_PATHS:
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:500])
        assert "<svg" in response.text and "<rect" in response.text, path
        assert "<img src=x" not in response.text and "<script>" not in response.text, path
    projects = client.get("/projects").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in projects
    verification = client.get("/verification", params={"user": "mallory"}).text
    assert "&lt;script&gt;alert(&#39;quote&#39;)&lt;/script&gt;" in verification


def test_a_drill_down_narrows_to_the_users_projects_and_sessions(client: TestClient) -> None:
    users = client.get("/users").text
    assert "/projects?tz=UTC&amp;user=sniffly" in users
    projects = client.get("/projects", params={"user": "sniffly"}).text
    assert "-Users-chip-dev-ai-music" in projects and XSS_FOLDER.replace("<", "&lt;") not in projects
    sessions = client.get("/sessions", params={"user": "sniffly", "project": "-Users-chip-dev-ai-music"})
    assert sessions.status_code == 200 and "ccusage-fixtures" not in sessions.text


def test_a_missing_database_is_a_page_that_says_so_and_503_on_healthz(tmp_path: Path) -> None:
    client = TestClient(create_app(tmp_path / "nothing.duckdb", default_tz="UTC"), raise_server_exceptions=False)
    health = client.get("/healthz")
    assert health.status_code == 503 and "does not exist" in health.text and health.text.count("\n") == 1
    page = client.get("/")
    assert page.status_code == 503 and "does not exist" in page.text and "<html" in page.text
    assert client.get("/api/usage").status_code == 503
    assert client.get("/metrics").status_code == 503


def test_a_damaged_snapshot_is_a_503_never_a_traceback(db: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.duckdb"
    damaged.write_bytes(b"")
    snapshot_path(damaged).write_bytes(b"not a duckdb file\n" * 4096)
    client = TestClient(create_app(damaged, default_tz="UTC"), raise_server_exceptions=False)
    for path in ("/healthz", "/", "/api/usage", "/metrics", "/runs"):
        response = client.get(path)
        assert response.status_code == 503, (path, response.text[:300])
        assert "Traceback" not in response.text and "cannot" in response.text, path
    truncated = tmp_path / "truncated.duckdb"
    truncated.write_bytes(b"")
    snapshot_path(truncated).write_bytes(snapshot_path(db).read_bytes()[: 64 * 1024])
    client = TestClient(create_app(truncated, default_tz="UTC"), raise_server_exceptions=False)
    for path in ("/healthz", "/", "/api/usage?by=session"):
        response = client.get(path)
        assert response.status_code == 503, (path, response.text[:300])
        assert "Traceback" not in response.text


def test_real_serve_follows_a_new_snapshot_and_never_blocks_a_run(tmp_path: Path) -> None:
    db = tmp_path / "live.duckdb"
    run_usage(CORPUS / "ccusage-fixtures" / "projects", "first", db)
    with serving(db) as base:
        status, body = get(base + "/api/usage?by=user&tz=UTC")
        assert status == 200 and [u["user"] for u in json.loads(body)["users"]] == ["first"]
        # serve now holds the snapshot open; a run must still take the database and publish
        # (a run that waited on a lock would time out: alone, it takes seconds)
        run_usage(CORPUS / "sniffly" / "projects", "second", db, timeout=120)
        status, body = get(base + "/api/usage?by=user&tz=UTC")
        assert status == 200
        assert sorted(u["user"] for u in json.loads(body)["users"]) == ["first", "second"]
        assert_same(json.loads(body), cli_json("report", "usage", "--by", "user", "--tz", "UTC", "--db", db))
        status, body = get(base + "/healthz")
        assert (status, body) == (200, "ok\n")


def test_the_runs_page_lists_failed_sessions_with_their_error(tmp_path: Path) -> None:
    db = tmp_path / "failing.duckdb"
    hostile = write_hostile_sessions(tmp_path / "hostile")
    refuse = lambda body: error_reply(400, "invalid_request_error", "<b>refused</b> by the API")  # noqa: E731
    run = run_verification(hostile, db, refuse)
    assert run_summary(run)["errors"] >= 1, run.stdout
    client = TestClient(create_app(db, default_tz="UTC"), raise_server_exceptions=False)
    status = cli_json("status", "--db", db)
    assert api(client, "/api/runs") == status
    assert status["processors"]["verification"]["sessions"].get("failed", 0) >= 1  # type: ignore[index]
    page = client.get("/runs")
    assert page.status_code == 200
    assert "talk-session.jsonl" in page.text and "&lt;b&gt;refused&lt;/b&gt;" in page.text
    assert "<b>refused" not in page.text
