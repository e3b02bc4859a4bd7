"""On a generated corpus, ``sessionpipe report usage`` and ccusage 20.0.24 (the reference, run over the
same files) agree on every month and every session: the demo generator makes the shapes real
transcripts have (resumed sessions, copies in another user's folder), and both readings count them
alike. The generator's own checks are in ``tests/unit/test_synth.py``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from sessionpipe_contract import EXIT_OK
from sessionpipe_demo import generate_corpus
from tests import ccusage
from tests.runner_support import run_summary, sessionpipe

pytestmark = pytest.mark.parity

TOKEN_FIELDS = ("inputTokens", "outputTokens", "cacheCreationTokens", "cacheReadTokens", "totalTokens")


def test_sessionpipe_and_ccusage_agree_on_a_generated_corpus(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    stats = generate_corpus(sessions, users=3, target_bytes=3_000_000, seed=23)
    assert stats.resumed_sessions or stats.copied_sessions
    db = tmp_path / "usage.duckdb"
    run = sessionpipe("run", "--processor", "usage", "--sessions", sessions, "--db", db, "--json")
    summary = run_summary(run)
    assert run.returncode == EXIT_OK and summary["errors"] == 0 and summary["issues"] == {}, summary
    # ccusage reads one config directory per user (its projects/ is that user's folder), all at once
    config_dirs = []
    for user in sorted(p.name for p in sessions.iterdir()):
        config = tmp_path / "claude" / user
        config.mkdir(parents=True)
        (config / "projects").symlink_to(sessions / user, target_is_directory=True)
        config_dirs.append(str(config))
    every_user = Path(",".join(config_dirs))  # CLAUDE_CONFIG_DIR takes a comma-separated list

    ours = _report(db, "month")
    theirs = ccusage.run("monthly", every_user)
    assert [m["month"] for m in ours["monthly"]] == [m["month"] for m in theirs["monthly"]]
    assert len(theirs["monthly"]) >= 6
    for our_month, their_month in zip(ours["monthly"], theirs["monthly"], strict=True):
        _assert_same(our_month, their_month, their_month["month"])
    _assert_same(ours["totals"], theirs["totals"], "totals")

    ours = _report(db, "session")
    theirs = ccusage.run("session", every_user)
    # ccusage has no users: a session copied into two users' folders is one session to it
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in ours["sessions"]:
        key = (entry["projectPath"], entry["sessionId"])
        into = merged.setdefault(key, {"totalCost": 0.0, **dict.fromkeys(TOKEN_FIELDS, 0), "modelBreakdowns": []})
        for name in (*TOKEN_FIELDS, "totalCost"):
            into[name] += entry[name]
        into["modelBreakdowns"] += entry["modelBreakdowns"]
    their_sessions = {(s["projectPath"], s["sessionId"]): s for s in theirs["sessions"]}
    assert merged.keys() == their_sessions.keys()
    for key, expected in their_sessions.items():
        _assert_same(merged[key], expected, f"session {key}")


def _report(db: Path, by: str) -> dict[str, Any]:
    result = sessionpipe("report", "usage", "--by", by, "--json", "--tz", "UTC", "--db", db)
    assert result.returncode == EXIT_OK, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _model_totals(entry: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for breakdown in entry["modelBreakdowns"]:
        for index, name in enumerate(TOKEN_FIELDS[:4]):
            totals[breakdown["modelName"]][index] += breakdown[name]
    return {model: tuple(values) for model, values in totals.items()}


def _assert_same(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> None:
    for name in TOKEN_FIELDS:
        assert ours[name] == theirs[name], f"{where}: {name} {ours[name]} != ccusage {theirs[name]}"
    assert ours["totalCost"] == pytest.approx(theirs["totalCost"], rel=1e-6), where
    if "modelBreakdowns" in theirs:
        assert _model_totals(ours) == _model_totals(theirs), where
