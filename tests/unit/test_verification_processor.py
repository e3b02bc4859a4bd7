"""The verification processor inside the real runner, on real DuckDB files, with a replayed API.

Every run goes through :func:`sessionpipe_runner.runner.run` (in process, so the replaying transport
and instant sleeps can be handed to the processor), except the last test, which runs the
``sessionpipe`` command in another process against a local HTTP server through ``ANTHROPIC_BASE_URL``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import pytest

from sessionpipe_contract import EXIT_FAILED, EXIT_OK, EXIT_USAGE, OUTCOME_FAILED, OUTCOME_STOPPED, OUTCOME_SUCCEEDED
from sessionpipe_runner.cli import main
from sessionpipe_runner.lease.file import FileLease
from sessionpipe_runner.processors.verification import VerificationProcessor
from sessionpipe_runner.runner import RunSettings, run
from sessionpipe_runner.summary import RunSummary
from tests.anthropic_replay import (
    AnthropicReplay,
    ReplayServer,
    Reply,
    error_reply,
    item,
    overloaded,
    rate_limited,
    tool_reply,
)
from tests.runner_support import CORPUS, run_summary, sessionpipe, sessionpipe_env
from tests.support.db import rows
from tests.unit.test_verification_conversation import (
    blocks,
    plain_user_texts,
    planted_secrets,
    squash,
    text_with_secrets,
)

SNIFFLY = CORPUS / "sniffly" / "projects"
KEY = {"ANTHROPIC_API_KEY": "sk-ant-test-key"}


def run_once(
    sessions: Path,
    db: Path,
    processor: VerificationProcessor,
    *,
    user: str | None = None,
    config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] = KEY,
) -> RunSummary:
    settings = RunSettings(
        processor="verification",
        sessions=sessions,
        database=db,
        user=user,
        lease_wait_seconds=5,
        config=dict(config or {}),
        environ=dict(environ),
    )
    return run(settings, processor, FileLease(db, "verification"))


def processor_for(replay: AnthropicReplay) -> VerificationProcessor:
    return VerificationProcessor(http_client=replay.client(), sleep=lambda seconds: None)


def write_session(path: Path, exchanges: list[tuple[str, str]]) -> Path:
    """A transcript in the real line format: user strings, assistant text blocks, a tool round trip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for n, (said, answered) in enumerate(exchanges):
        envelope = {"sessionId": path.stem, "isSidechain": False, "cwd": "/srv/app", "version": "2.0.28"}
        lines.append({**envelope, "type": "user", "uuid": f"u{n}", "message": {"role": "user", "content": said}})
        lines.append(
            {
                **envelope,
                "type": "assistant",
                "uuid": f"a{n}",
                "message": {
                    "id": f"msg_{path.stem}_{n}",
                    "role": "assistant",
                    "model": "claude-sonnet-4-6",
                    "content": [{"type": "text", "text": answered}],
                },
            }
        )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def first_user_turn(body: dict[str, Any]) -> str:
    conversation = body["messages"][0]["content"]
    start = conversation.index('<turn role="user">\n') + len('<turn role="user">\n')
    return squash(conversation[start : conversation.index("\n</turn>", start)])


def quote_first_user_turn(body: dict[str, Any]) -> Reply:
    """Reply with one item quoting the request's first user turn, and one with an invented quote."""
    quote = first_user_turn(body)[:60].strip()
    return tool_reply(
        [
            item(quote, title=quote[:60], content=f"The user said: {quote}"),
            item("words the user never wrote", title="Invented", content="Not supported by any quote."),
        ]
    )


# --- 1. real transcripts in, the model's items out -------------------------------------------------------
def test_requests_carry_the_real_conversation_and_items_are_stored_with_evidence(tmp_path: Path) -> None:
    db = tmp_path / "db.duckdb"
    replies: dict[str, str] = {}  # file stem -> quote sent back for it

    def responder(body: dict[str, Any]) -> Reply:
        conversation = squash(body["messages"][0]["content"])
        for path in (SNIFFLY / "-Users-chip-dev-ai-music").glob("*.jsonl"):
            typed = plain_user_texts(path)
            if typed and squash(typed[0]) in conversation:
                replies[path.stem] = squash(typed[0])[:50].strip()
                return tool_reply([item(replies[path.stem], title=f"From {path.stem[:8]}")])
        raise AssertionError("a request that carries no session's user text")

    replay = AnthropicReplay(responder=responder)
    summary = run_once(SNIFFLY, db, processor_for(replay), user="chip")

    transcripts = [p for p in (SNIFFLY / "-Users-chip-dev-ai-music").glob("*.jsonl") if plain_user_texts(p)]
    assert len(transcripts) == 3 and len(replay.requests) == 3
    for path in transcripts:
        [request] = [r for r in replay.requests if squash(plain_user_texts(path)[0]) in squash(r.conversation)]
        sent = squash(request.conversation)
        for text in plain_user_texts(path):
            assert squash(text) in sent
        for block in blocks(path, "assistant", "text"):
            assert squash(block["text"]) in sent
    assert (summary.outcome, summary.processed, summary.errors, summary.items) == (OUTCOME_SUCCEEDED, 4, 0, 3)
    assert summary.issues["no_user_text"] == 1  # the file holding only a summary line: no call
    stored = rows(
        db,
        "SELECT e.session_file, e.user_quote, i.detection_type, i.confidence, i.title FROM knowledge_evidence e "
        "JOIN knowledge_items i USING (item_id) ORDER BY 1",
    )
    assert sorted((f"chip/-Users-chip-dev-ai-music/{stem}.jsonl", quote) for stem, quote in replies.items()) == [
        (session, quote) for session, quote, *_ in stored
    ]
    assert {(kind, confidence) for _, _, kind, confidence, _ in stored} == {("unprompted_definition", 0.6)}
    states = rows(db, "SELECT status, count(*), sum(items) FROM session_processor_state GROUP BY ALL")
    assert states == [("done", 4, 3)]


def test_quotes_not_in_the_users_words_are_dropped_and_counted(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    write_session(
        sessions / "alice" / "app" / "s1.jsonl",
        [("Our API always returns UTC timestamps.", "Got it, I will assume UTC everywhere.")],
    )

    def responder(body: dict[str, Any]) -> Reply:
        return tool_reply(
            [
                item("Our API always returns UTC timestamps.", title="API timestamps are UTC"),
                item("I will assume UTC everywhere", title="Quoting the assistant"),  # assistant words
                item("Our API never returns UTC", title="Invented"),
            ]
        )

    summary = run_once(sessions, tmp_path / "db.duckdb", processor_for(AnthropicReplay(responder=responder)))
    assert summary.items == 1 and summary.issues["quote_not_found"] == 2
    assert rows(tmp_path / "db.duckdb", "SELECT title FROM knowledge_items") == [("API timestamps are UTC",)]


# --- 2. failures are failures ------------------------------------------------------------------------------
def test_transient_errors_inside_a_run_are_retried_and_the_session_is_done(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    write_session(sessions / "alice" / "app" / "s1.jsonl", [("Use pnpm, not npm, in this repo.", "Switching.")])
    good = tool_reply([item("Use pnpm, not npm, in this repo.", title="Use pnpm")])
    replay = AnthropicReplay([rate_limited(2), overloaded(), error_reply(500, "api_error", "Internal"), good])
    summary = run_once(sessions, tmp_path / "db.duckdb", processor_for(replay))
    assert len(replay.requests) == 4
    assert (summary.processed, summary.errors, summary.items, summary.counters["llm_retries"]) == (1, 0, 1, 3)
    assert summary.counters["llm_calls"] == 4 and "llm_retries" not in summary.issues  # requests, retries included


def test_when_retries_run_out_the_session_fails_and_is_not_done(tmp_path: Path) -> None:
    db = tmp_path / "db.duckdb"
    replay = AnthropicReplay(responder=lambda body: overloaded())
    config = {"max_retries": 2}
    first = run_once(SNIFFLY, db, processor_for(replay), user="chip", config=config)
    assert (first.outcome, first.errors, first.processed, first.items) == ("completed_with_errors", 3, 1, 0)
    assert len(replay.requests) == 3 * 3  # three sessions, each tried three times
    failed = rows(db, "SELECT status, attempts, last_error FROM session_processor_state WHERE status <> 'done'")
    assert len(failed) == 3
    assert all(status == "failed" and attempts == 1 and "529" in error for status, attempts, error in failed)
    assert rows(db, "SELECT count(*) FROM knowledge_evidence") == [(0,)]
    second = run_once(SNIFFLY, db, processor_for(replay), user="chip", config=config)
    assert second.errors == 3 and second.unchanged == 1
    assert rows(db, "SELECT DISTINCT attempts FROM session_processor_state WHERE status = 'failed'") == [(2,)]


def test_output_malformed_after_its_repair_fails_the_session(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    write_session(sessions / "alice" / "app" / "s1.jsonl", [("Tabs, not spaces.", "OK.")])
    bad = tool_reply([])
    bad.body["content"][0]["input"] = {"mood": "?"}  # no items list: nothing to salvage, only a repair helps
    replay = AnthropicReplay([bad, bad])
    db = tmp_path / "db.duckdb"
    summary = run_once(sessions, db, processor_for(replay))
    assert summary.errors == 1 and len(replay.requests) == 2
    [(status, attempts, error)] = rows(db, "SELECT status, attempts, last_error FROM session_processor_state")
    assert (status, attempts) == ("failed", 1) and "malformed twice" in error


def test_missing_api_key_fails_the_run_with_an_explanation_and_touches_no_session(tmp_path: Path) -> None:
    replay = AnthropicReplay()
    db = tmp_path / "db.duckdb"
    summary = run_once(SNIFFLY, db, processor_for(replay), user="chip", environ={})
    assert (summary.outcome, summary.exit_code) == (OUTCOME_FAILED, EXIT_USAGE)  # bad settings, as the README says
    assert "ANTHROPIC_API_KEY is not set" in summary.message
    assert replay.requests == [] and rows(db, "SELECT count(*) FROM session_processor_state") == [(0,)]


def test_sessionpipe_run_of_verification_without_an_api_key_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    sessions = tmp_path / "sessions"
    write_session(sessions / "alice" / "app" / "s1.jsonl", [("Tabs, not spaces.", "OK.")])
    code = main(["run", "--processor", "verification", "--sessions", str(sessions), "--db", str(tmp_path / "v.duckdb")])
    assert code == EXIT_USAGE
    assert "ANTHROPIC_API_KEY is not set" in capsys.readouterr().out


def test_rejected_credentials_fail_the_run_without_charging_sessions(tmp_path: Path) -> None:
    replay = AnthropicReplay(responder=lambda body: error_reply(401, "authentication_error", "invalid x-api-key"))
    db = tmp_path / "db.duckdb"
    summary = run_once(SNIFFLY, db, processor_for(replay), user="chip")
    assert summary.outcome == OUTCOME_FAILED and summary.exit_code == EXIT_FAILED
    assert "401" in summary.message and len(replay.requests) == 1
    assert rows(db, "SELECT count(*) FROM session_processor_state WHERE status <> 'done'") == [(0,)]


# --- 3. reprocessing never duplicates ------------------------------------------------------------------------
class BumpedVerification(VerificationProcessor):
    version: ClassVar[str] = VerificationProcessor.version + "-bumped"


def evidence_triples(db: Path) -> list[tuple[Any, ...]]:
    return rows(
        db, "SELECT session_file, item_id, user_quote, count(*) FROM knowledge_evidence GROUP BY ALL ORDER BY ALL"
    )


def test_reprocessing_a_changed_or_re_versioned_session_keeps_one_evidence_row_per_quote(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    session = sessions / "chip" / "music" / "d3ad4cdc.jsonl"
    session.parent.mkdir(parents=True)
    shutil.copyfile(SNIFFLY / "-Users-chip-dev-ai-music" / "d3ad4cdc-5657-435d-98fa-0035d53e383d.jsonl", session)
    quote = squash(plain_user_texts(session)[0])[:40]

    def responder(body: dict[str, Any]) -> Reply:
        # The same item twice with the same quote, and a near-duplicate of it (another title, the same
        # statement but for one word: merging goes by what the content says, not by the title).
        same = item(quote, title="Notebook per step", content="The user wants a notebook to test each step.")
        near = item(quote, title="One notebook for steps", content="The user wants a notebook to test every step.")
        return tool_reply([same, same, near])

    db = tmp_path / "db.duckdb"
    replay = AnthropicReplay(responder=responder)
    first = run_once(sessions, db, processor_for(replay))
    assert first.processed == 1
    once = evidence_triples(db)
    assert [count for *_, count in once] == [1]  # duplicates and the near-duplicate collapsed into one row

    with session.open("a") as handle:  # the session goes on: the file changes
        handle.write(json.dumps({"type": "user", "message": {"role": "user", "content": "thanks, that works"}}) + "\n")
    assert run_once(sessions, db, processor_for(replay)).processed == 1
    assert evidence_triples(db) == once

    bumped = BumpedVerification(http_client=replay.client(), sleep=lambda seconds: None)
    assert run_once(sessions, db, bumped).processed == 1
    assert evidence_triples(db) == once
    assert len(replay.requests) == 3
    assert rows(db, "SELECT count(*) FROM knowledge_items") == [(1,)]


def test_near_duplicates_across_sessions_merge_but_corrections_stay_apart(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    texts = {
        "s1": "Releases are cut from the main branch every Tuesday.",
        "s2": "We cut releases from main every Tuesday, remember.",
    }
    for stem, text in texts.items():
        write_session(sessions / "alice" / "app" / f"{stem}.jsonl", [(text, "Noted.")])

    def responder(body: dict[str, Any]) -> Reply:
        said = first_user_turn(body)
        return tool_reply(
            [
                item(said, title="Release cadence", content="Releases are cut from main every Tuesday."),
                item(
                    said,
                    detection_type="correction",
                    title="Release cadence",
                    content=f"Releases are cut from main every Tuesday ({said[:10]}).",
                ),
            ]
        )

    db = tmp_path / "db.duckdb"
    run_once(sessions, db, processor_for(AnthropicReplay(responder=responder)))
    merged = rows(
        db,
        "SELECT i.detection_type, count(DISTINCT i.item_id), count(*) FROM knowledge_items i "
        "JOIN knowledge_evidence e USING (item_id) GROUP BY ALL ORDER BY ALL",
    )
    assert merged == [("correction", 2, 2), ("unprompted_definition", 1, 2)]
    # Forgetting one session keeps the shared item (the other session supports it) and drops its correction.
    (sessions / "alice" / "app" / "s1.jsonl").unlink()
    with duckdb.connect(str(db)) as con:
        VerificationProcessor().forget(con, ["alice/app/s1.jsonl"])
        assert con.execute(
            "SELECT detection_type, count(*) FROM knowledge_items GROUP BY ALL ORDER BY ALL"
        ).fetchall() == [
            ("correction", 1),
            ("unprompted_definition", 1),
        ]


# --- 4. secrets never leave ---------------------------------------------------------------------------------
def test_planted_secrets_never_reach_the_api_and_redactions_are_counted(tmp_path: Path) -> None:
    secrets = planted_secrets()
    sessions = tmp_path / "sessions"
    write_session(
        sessions / "alice" / "app" / "s1.jsonl",
        [
            (f"Here is the config, use it as is:\n{text_with_secrets(secrets)}", "I will use these credentials."),
            ("Deploy now.", f"Deploying with token {secrets['github_token']} and {secrets['anthropic_key']}."),
        ],
    )
    replay = AnthropicReplay(responder=lambda body: tool_reply([]))
    summary = run_once(sessions, tmp_path / "db.duckdb", processor_for(replay))
    assert summary.processed == 1 and len(replay.requests) == 1
    sent = replay.requests[0].raw.decode()
    for name, secret in secrets.items():
        assert secret not in sent, name
        assert json.dumps(secret)[1:-1] not in sent, name
    assert "[REDACTED:anthropic_key]" in replay.requests[0].conversation
    assert summary.issues["redacted_anthropic_key"] == 2 and summary.issues["redacted_private_key"] == 1
    for kind in ("openai_key", "aws_access_key_id", "github_token", "slack_token", "google_api_key", "stripe_key"):
        assert summary.issues[f"redacted_{kind}"] >= 1, kind
    for kind in ("bearer_token", "url_password", "aws_secret_access_key"):
        assert summary.issues[f"redacted_{kind}"] >= 1, kind


# --- 5. budgets stop a run cleanly, the next run goes on -----------------------------------------------------
def test_token_budget_stops_before_it_is_exceeded_and_the_next_run_continues(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    for n in range(5):
        write_session(
            sessions / "alice" / "app" / f"s{n}.jsonl", [(f"Session {n}: the staging port is 84{n}3.", "OK.")]
        )
    budget, per_call = 6000, 2600  # the fake API reports 2600 tokens per call

    def responder(body: dict[str, Any]) -> Reply:
        return tool_reply([item(first_user_turn(body))], input_tokens=per_call - 100, output_tokens=100)

    db = tmp_path / "db.duckdb"
    replay = AnthropicReplay(responder=responder)
    config = {"max_tokens_per_run": budget, "max_output_tokens": 256}
    seen_per_run: list[list[str]] = []
    summaries = []
    for _ in range(5):
        before = len(replay.requests)
        summaries.append(run_once(sessions, db, processor_for(replay), config=config))
        seen_per_run.append([first_user_turn(r.body) for r in replay.requests[before:]])
        if summaries[-1].outcome == OUTCOME_SUCCEEDED:
            break
    first = summaries[0]
    assert first.outcome == OUTCOME_STOPPED and "token budget" in first.message and first.exit_code == EXIT_OK
    assert 1 <= first.processed < 5 and first.issues["left_for_next_run"] == 5 - first.processed
    for summary, seen in zip(summaries, seen_per_run, strict=True):
        assert len(seen) * per_call <= budget  # what the API reports as spent never passes the budget
        assert summary.processed == len(seen)
        # the summary's counters are what the API reported, not what the runner guessed
        assert summary.counters["llm_calls"] == len(seen) and summary.counters["llm_tokens"] == len(seen) * per_call
    all_seen = [text for seen in seen_per_run for text in seen]
    assert len(all_seen) == len(set(all_seen)) == 5  # each session called once over the runs, none lost
    assert summaries[-1].outcome == OUTCOME_SUCCEEDED
    assert rows(db, "SELECT status, count(*) FROM session_processor_state GROUP BY ALL") == [("done", 5)]


def test_session_budget_stops_the_run_and_leaves_the_rest(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    for n in range(3):
        write_session(sessions / "alice" / "app" / f"s{n}.jsonl", [(f"Fact number {n} holds.", "OK.")])
    replay = AnthropicReplay(responder=lambda body: tool_reply([]))
    db = tmp_path / "db.duckdb"
    first = run_once(sessions, db, processor_for(replay), config={"max_sessions_per_run": 2})
    assert (first.outcome, first.processed, first.issues["left_for_next_run"]) == (OUTCOME_STOPPED, 2, 1)
    second = run_once(sessions, db, processor_for(replay), config={"max_sessions_per_run": 2})
    assert (second.outcome, second.processed, second.unchanged) == (OUTCOME_SUCCEEDED, 1, 2)
    assert len(replay.requests) == 3


def test_a_run_stopped_early_names_its_reason_in_its_own_field(tmp_path: Path) -> None:
    """The reason travels as ``stopped_early`` (None otherwise); the message still says it, as before."""
    sessions = tmp_path / "sessions"
    for n in range(2):
        write_session(sessions / "alice" / "app" / f"s{n}.jsonl", [(f"Fact number {n} holds.", "OK.")])
    replay = AnthropicReplay(responder=lambda body: tool_reply([]))
    db = tmp_path / "db.duckdb"
    first = run_once(sessions, db, processor_for(replay), config={"max_sessions_per_run": 1})
    assert first.outcome == OUTCOME_STOPPED and first.stopped_early is not None
    assert first.message == f"stopped early: {first.stopped_early}"
    assert json.loads(first.compact())["stopped_early"] == first.stopped_early
    second = run_once(sessions, db, processor_for(replay), config={"max_sessions_per_run": 1})
    assert (second.outcome, second.stopped_early) == (OUTCOME_SUCCEEDED, None)


def test_unknown_or_invalid_settings_fail_the_run_clearly(tmp_path: Path) -> None:
    summary = run_once(SNIFFLY, tmp_path / "db.duckdb", VerificationProcessor(), user="chip", config={"max_turn": 5})
    assert summary.outcome == OUTCOME_FAILED and "max_turn" in summary.message


# --- the command line, end to end --------------------------------------------------------------------------
def test_cli_run_against_a_local_api_then_report(tmp_path: Path) -> None:
    db = tmp_path / "db.duckdb"
    server = ReplayServer(responder=quote_first_user_turn)
    with server.running():
        env = sessionpipe_env(ANTHROPIC_API_KEY="sk-ant-test-key", ANTHROPIC_BASE_URL=server.url)
        result = sessionpipe(
            "run", "--processor", "verification", "--sessions", SNIFFLY, "--user", "chip", "--db", db, "--json", env=env
        )
    summary = run_summary(result)
    assert (result.returncode, summary["outcome"], summary["processed"], summary["items"]) == (0, "succeeded", 4, 3)
    assert summary["issues"]["quote_not_found"] == 3
    assert len(server.requests) == 3 and all(r.url == "/v1/messages" for r in server.requests)
    assert all(r.body["model"] == "claude-sonnet-4-6" for r in server.requests)

    report = sessionpipe("report", "verification", "--db", db, "--json", env=env)
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["totals"] == {"items": 3, "evidence": 3, "by_detection_type": {"unprompted_definition": 3}}
    quotes = {first_user_turn(r.body)[:60].strip() for r in server.requests}
    assert {source["quote"] for entry in data["items"] for source in entry["sources"]} == quotes
    assert all(entry["evidence_count"] == 1 and entry["sources"][0]["user"] == "chip" for entry in data["items"])
    text = sessionpipe("report", "verification", "--db", db, env=env)
    assert text.returncode == 0 and "3 knowledge items" in text.stdout
