"""``mode: batch``: one Message Batch per run, collected by later runs, against a fake Batches API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sessionpipe_runner.processors.verification import VerificationProcessor
from sessionpipe_runner.summary import RunSummary
from tests.anthropic_fake_api import BatchAPI
from tests.anthropic_replay import Reply, item, tool_reply
from tests.support.db import rows
from tests.unit.test_verification_processor import run_once, write_session

BATCH = {"mode": "batch"}


def quote_the_user(body: dict[str, Any]) -> Reply:
    """One item quoting the first user turn of the request."""
    text = body["messages"][0]["content"]
    start = text.index('<turn role="user">\n') + len('<turn role="user">\n')
    said = text[start : text.index("\n</turn>", start)]
    return tool_reply([item(said, title=said[:40])])


def sessions_with(root: Path, said: dict[str, str]) -> Path:
    for stem, text in said.items():
        write_session(root / "alice" / "app" / f"{stem}.jsonl", [(text, "Noted.")])
    return root


def batch_run(sessions: Path, db: Path, api: BatchAPI) -> RunSummary:
    return run_once(sessions, db, VerificationProcessor(http_client=api.client(), sleep=lambda s: None), config=BATCH)


def states(db: Path) -> dict[str, str]:
    return dict(rows(db, "SELECT session_file, status FROM session_processor_state"))


def quotes(db: Path) -> list[str]:
    return sorted(row[0] for row in rows(db, "SELECT user_quote FROM knowledge_evidence"))


def test_batch_mode_submits_once_waits_without_losing_anything_then_collects(tmp_path: Path) -> None:
    said = {"s1": "Deploys go through Helm.", "s2": "Staging listens on 8443.", "s3": "Tabs, never spaces."}
    sessions, db, api = sessions_with(tmp_path / "sessions", said), tmp_path / "db.duckdb", BatchAPI(quote_the_user)

    first = batch_run(sessions, db, api)
    assert len(api.created) == 1 and len(api.created[0]["requests"]) == 3  # one batch for the run
    recorded = rows(db, "SELECT session_file, custom_id, batch_id FROM verification_batch_requests ORDER BY 1")
    assert [row[0] for row in recorded] == [f"alice/app/{stem}.jsonl" for stem in said]
    assert {row[1] for row in recorded} == {request["custom_id"] for request in api.created[0]["requests"]}
    assert first.issues["waiting_for_result"] == 3 and first.processed == 0 and first.errors == 0
    assert states(db) == {} and quotes(db) == []

    second = batch_run(sessions, db, api)  # the batch is still in progress
    assert second.issues["waiting_for_result"] == 3 and len(api.created) == 1
    assert states(db) == {} and len(rows(db, "SELECT * FROM verification_batch_requests")) == 3

    api.end()
    third = batch_run(sessions, db, api)
    assert third.processed == 3 and third.items == 3 and len(api.created) == 1
    assert set(states(db).values()) == {"done"} and quotes(db) == sorted(said.values())
    assert rows(db, "SELECT count(*) FROM verification_batch_requests") == [(0,)]
    assert third.counters["llm_calls"] == 3 and third.counters["llm_cost_microusd"] > 0
    assert batch_run(sessions, db, api).unchanged == 3  # done: nothing is sent again


def test_expired_and_errored_requests_are_sent_again_then_quarantined(tmp_path: Path) -> None:
    said = {"s1": "Deploys go through Helm.", "s2": "Staging listens on 8443."}
    sessions, db, api = sessions_with(tmp_path / "sessions", said), tmp_path / "db.duckdb", BatchAPI(quote_the_user)
    batch_run(sessions, db, api)
    for attempt in (1, 2, 3):
        expired, errored = (request["custom_id"] for request in api.created[-1]["requests"])
        api.end(expire=frozenset({expired}), fail=frozenset({errored}))
        collected = batch_run(sessions, db, api)  # both fail this attempt; they go out again next run
        assert collected.errors == 2 and quotes(db) == []
        status = "quarantined" if attempt == 3 else "failed"
        assert set(states(db).values()) == {status}
        if attempt < 3:
            resent = batch_run(sessions, db, api)
            assert resent.issues["waiting_for_result"] == 2 and len(api.created) == attempt + 1
    assert batch_run(sessions, db, api).issues["quarantined_unchanged"] == 2


def test_a_session_that_changed_while_pending_never_stores_the_stale_result(tmp_path: Path) -> None:
    sessions, db, api = (
        sessions_with(tmp_path / "sessions", {"s1": "The old words stay."}),
        tmp_path / "db.duckdb",
        BatchAPI(quote_the_user),
    )
    batch_run(sessions, db, api)
    sessions_with(sessions, {"s1": "The new words win."})
    api.end()
    changed = batch_run(sessions, db, api)
    assert changed.issues["batch_result_stale"] == 1 and changed.issues["waiting_for_result"] == 1, changed.compact()
    assert quotes(db) == [] and len(api.created) == 2
    api.end()
    assert batch_run(sessions, db, api).processed == 1
    assert quotes(db) == ["The new words win."]


class DiesBeforeCommit(VerificationProcessor):
    def write(self, con: Any, batch_of: Any) -> None:
        raise RuntimeError("the run died between collecting the results and committing them")


def test_a_run_dying_between_collect_and_commit_loses_nothing(tmp_path: Path) -> None:
    sessions, db, api = (
        sessions_with(tmp_path / "sessions", {"s1": "Deploys go through Helm."}),
        tmp_path / "db.duckdb",
        BatchAPI(quote_the_user),
    )
    batch_run(sessions, db, api)
    api.end()
    run_once(sessions, db, DiesBeforeCommit(http_client=api.client(), sleep=lambda s: None), config=BATCH)
    assert quotes(db) == [] and len(rows(db, "SELECT * FROM verification_batch_requests")) == 1
    assert batch_run(sessions, db, api).processed == 1  # the same results, read again
    assert quotes(db) == ["Deploys go through Helm."] and len(api.created) == 1
