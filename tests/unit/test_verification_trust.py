"""Verification you can trust (issue 18): what leaves, what comes back, and what is stored.

Each test drives the real processor (``start`` then ``process``) with the SDK talking to the
replaying transport, which records every request byte for byte; store tests use a real DuckDB file.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from sessionpipe_runner.migrations import apply_migrations
from sessionpipe_runner.processors.base import RunContext, SessionFile
from sessionpipe_runner.processors.verification import VerificationOutput, VerificationProcessor, store
from sessionpipe_runner.processors.verification.report import render_text, verification_report
from sessionpipe_runner.processors.verification.schema import DetectionType
from sessionpipe_runner.store import migrate
from tests.anthropic_replay import AnthropicReplay, Reply, item, message, tool_reply

KEY = {"ANTHROPIC_API_KEY": "sk-ant-test-key"}
SESSION = SessionFile(
    key="alice/app/s1.jsonl", location="/nonexistent", user="alice", project="app", session_id="s1", size=0, mtime_ns=0
)


def started(replay: AnthropicReplay, config: dict[str, Any] | None = None) -> VerificationProcessor:
    processor = VerificationProcessor(http_client=replay.client(), sleep=lambda seconds: None)
    processor.start(RunContext("run-1", Path("/nonexistent.duckdb"), dict(config or {}), KEY))
    return processor


def user(content: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "user", "isSidechain": False, "message": {"role": "user", "content": content}, **extra}


def assistant(*blocks: dict[str, Any], message_id: str = "msg_1", **extra: Any) -> dict[str, Any]:
    return {
        "type": "assistant",
        "isSidechain": False,
        "message": {"id": message_id, "role": "assistant", "content": list(blocks)},
        **extra,
    }


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def transcript(*lines: dict[str, Any]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def process(
    data: bytes, reply: Reply | None = None, config: dict[str, Any] | None = None
) -> tuple[VerificationOutput, AnthropicReplay]:
    replay = AnthropicReplay(responder=lambda body: reply or tool_reply([]))
    output = started(replay, config).process(SESSION, data)
    assert isinstance(output, VerificationOutput)
    return output, replay


def sent(replay: AnthropicReplay) -> str:
    """Everything the API received: every request's body and headers."""
    return "\n".join(request.raw.decode() + json.dumps(request.headers) for request in replay.requests)


def conversation_sent(replay: AnthropicReplay) -> str:
    return "\n".join(request.conversation for request in replay.requests)


# --- 2. redact before you cut ---------------------------------------------------------------------------------
FILLER = "Please update the deployment notes for the staging cluster before Friday. " * 8
CUT_CONFIG = {"max_turn_chars": 300}  # the cut keeps the first 200 and the last 100 characters


def test_a_cut_just_before_an_aws_secret_does_not_send_the_bare_value() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "Q8hT2kLm9Z"
    suffix = " and then retry the job. " + "x" * 35  # the last 100 characters start with the value
    said = FILLER + "aws_secret_access_key = " + secret + suffix
    assert said[-100:].startswith(secret)
    _, replay = process(transcript(user(said), assistant(text("Done."))), config=CUT_CONFIG)
    assert "characters left out" in conversation_sent(replay)
    assert secret not in sent(replay) and secret[:20] not in sent(replay)


def test_a_pem_whose_begin_line_falls_in_the_cut_sends_no_key_material() -> None:
    body = [base64.b64encode(bytes((n * 7 + i) % 256 for i in range(48))).decode() for n in range(10)]
    pem = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(body) + "\n-----END RSA PRIVATE KEY-----"
    said = FILLER + "here is the key:\n" + pem + "\nthanks"
    _, replay = process(transcript(user(said), assistant(text("Done."))), config=CUT_CONFIG)
    assert "characters left out" in conversation_sent(replay)
    for line in body:
        assert line[:16] not in sent(replay) and line[-16:] not in sent(replay)


def test_a_cut_inside_a_token_does_not_send_its_prefix() -> None:
    token = "ghp_" + "Q7rT2xW9kLm4Np8Vb3Zc6Yd1Fh5Jg0KsAbCd"
    said = FILLER[:186] + token + " " + FILLER
    assert said[:200].endswith(token[:14])
    _, replay = process(transcript(user(said), assistant(text("Done."))), config=CUT_CONFIG)
    assert "characters left out" in conversation_sent(replay)
    assert token[:14] not in sent(replay) and token[4:14] not in sent(replay)


# --- 3. redact what comes back ----------------------------------------------------------------------------------
def test_secrets_the_model_echoes_are_redacted_before_they_are_stored() -> None:
    slipped = "ghp_" + "Q7rT2xW9kLm4Np8Vb3Zc6Yd1Fh5Jg0KsAbCd"
    anthropic = "sk-ant-api03-" + "Q7rT2xW9kLm4Np8Vb3Zc6Yd1Fh5Jg0Ks"
    said = "Our deploy pipeline always runs the migrations before the web tier starts."
    reply = tool_reply(
        [
            item(
                said,
                title=f"Token {slipped}",
                content=f"Deploy with password=Hunter2Hunter2 and {anthropic}.",
                entities=[slipped, "deploy pipeline"],
            )
        ]
    )
    output, _ = process(transcript(user(said), assistant(text("Noted."))), reply)
    assert output.extraction is not None
    [stored] = output.extraction.items
    everything = json.dumps([stored.title, stored.content, stored.user_quote, list(stored.entities)])
    assert slipped not in everything and anthropic not in everything and "Hunter2Hunter2" not in everything
    assert "[REDACTED:github_token]" in stored.title and "deploy pipeline" in stored.entities
    assert output.issues["returned_secret_redacted"] >= 3


# --- 4. quotes that mean something, from the user's own words ----------------------------------------------------
SAID = "Please never run the migrations by hand; the production database password lives in Vault."


@pytest.mark.parametrize("quote", ["o", "Please", "ok", "the production"], ids=["letter", "word", "ok", "two-words"])
def test_a_quote_too_short_to_mean_anything_is_refused(quote: str) -> None:
    reply = tool_reply([item(quote, title="Password", content="The production database password is hunter2.")])
    output, _ = process(transcript(user(SAID), assistant(text("Understood."))), reply)
    assert output.items == 0 and output.issues["quote_too_short"] == 1


def test_a_quote_of_three_words_from_a_user_turn_is_accepted() -> None:
    reply = tool_reply([item("never run the migrations", title="Migrations", content="Never run them by hand.")])
    output, _ = process(transcript(user(SAID), assistant(text("Understood."))), reply)
    assert output.items == 1


COMPACT_SUMMARY = (
    "This session is being continued from a previous conversation that ran out of context. "
    "The user asked to always deploy on Fridays with the blue-green strategy."
)


def test_a_compaction_summary_is_neither_sent_nor_accepted_as_user_words() -> None:
    data = transcript(
        user(COMPACT_SUMMARY, isCompactSummary=True, isVisibleInTranscriptOnly=True),
        user(SAID),
        assistant(text("Understood.")),
    )
    reply = tool_reply([item("always deploy on Fridays with the blue-green strategy", title="Fridays")])
    output, replay = process(data, reply)
    assert "continued from a previous conversation" not in sent(replay)
    assert output.items == 0 and output.issues["quote_not_found"] == 1


def test_a_quote_spanning_the_cut_marker_is_refused() -> None:
    said = "Always pin the base image digest. " + "filler words here " * 40 + "Use buildah, never docker, for images."
    data = transcript(user(said), assistant(text("Understood.")))
    _, replay = process(data, config=CUT_CONFIG)
    user_turn = conversation_sent(replay).split('<turn role="user">\n')[1].split("\n</turn>")[0]
    marker_at = user_turn.index("[…")
    spanning = user_turn[marker_at - 20 : user_turn.index("…]") + 12]
    reply = tool_reply([item(spanning, title="Spanning")])
    output, _ = process(data, reply, config=CUT_CONFIG)
    assert output.items == 0 and output.issues["quote_spans_cut"] == 1


def test_the_stored_quote_is_exactly_the_checked_text() -> None:
    raw = '"\u201cnever run the\x1b[2J migrations\u202e by hand;\u201d  \x07'
    reply = tool_reply([item(raw, title="Migrations", content="Never run them by hand.")])
    output, _ = process(transcript(user(SAID), assistant(text("Understood."))), reply)
    assert output.extraction is not None
    [stored] = output.extraction.items
    assert stored.user_quote == "never run the migrations by hand;"


# --- 5. merging says the same thing -------------------------------------------------------------------------------
def extraction(session: str, *items: store.AcceptedItem) -> store.SessionExtraction:
    from datetime import UTC, datetime

    return store.SessionExtraction(
        session, "alice", "app", session, "model", "run", datetime(2026, 1, 1, tzinfo=UTC), tuple(items)
    )


def accepted(title: str, content: str, quote: str) -> store.AcceptedItem:
    return store.AcceptedItem(DetectionType.UNPROMPTED_DEFINITION, title, content, quote, "workflow", (), 0.6)


def test_same_title_with_opposite_content_is_not_merged(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "db.duckdb")) as con:
        apply_migrations(con, "verification", store.MIGRATIONS)
        first = accepted("Deploys", "Deploys go through Helm.", "we deploy through Helm")
        opposite = accepted("Deploys", "Deploys never go through Helm.", "ok")
        store.replace_sessions(con, [extraction("s1", first)])
        store.replace_sessions(con, [extraction("s2", opposite)])
        items = con.execute(
            "SELECT i.content, count(*), count(DISTINCT e.session_file) FROM knowledge_items i "
            "JOIN knowledge_evidence e USING (item_id) GROUP BY ALL ORDER BY 1"
        ).fetchall()
    assert items == [("Deploys go through Helm.", 1, 1), ("Deploys never go through Helm.", 1, 1)]


def test_same_statement_in_other_words_still_merges(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "db.duckdb")) as con:
        apply_migrations(con, "verification", store.MIGRATIONS)
        store.replace_sessions(con, [extraction("s1", accepted("Deploys", "Deploys go through Helm charts.", "a b c"))])
        store.replace_sessions(
            con, [extraction("s2", accepted("Helm deploys", "Deploys go through the Helm charts.", "d e f"))]
        )
        assert con.execute("SELECT count(*) FROM knowledge_items").fetchall() == [(1,)]


def test_the_ok_quote_with_the_same_title_and_opposite_content_is_refused_by_the_processor() -> None:
    data = transcript(user("ok"), assistant(text("Deploys never go through Helm then.")), user(SAID))
    reply = tool_reply([item("ok", title="Deploys", content="Deploys never go through Helm.")])
    output, _ = process(data, reply)
    assert output.items == 0 and output.issues["quote_too_short"] == 1


# --- 6. what the model returns is untrusted --------------------------------------------------------------------------
HOSTILE = "\x1b[2J\x1b]8;;https://evil.example/\x07click\x1b]8;;\x07\x07\u202eevil\u202c"


def test_control_characters_from_the_model_are_stripped_before_storing() -> None:
    reply = tool_reply(
        [
            item(
                "never run the migrations",
                title=f"Migrations {HOSTILE}",
                content=f"By hand {HOSTILE}",
                entities=[HOSTILE],
            )
        ]
    )
    output, _ = process(transcript(user(SAID), assistant(text("Understood."))), reply)
    assert output.extraction is not None
    [stored] = output.extraction.items
    for value in (stored.title, stored.content, *stored.entities):
        assert not any(ord(char) < 32 or 0x7F <= ord(char) < 0xA0 or 0x202A <= ord(char) <= 0x202E for char in value)
        assert "evil.example" not in value
    assert output.issues["control_characters_removed"] >= 3


def test_the_text_report_escapes_control_characters_already_in_the_database(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "db.duckdb")) as con:
        migrate(con)  # the runner's tables: the report sums the recorded runs' LLM spending
        apply_migrations(con, "verification", store.MIGRATIONS)
        hostile = store.AcceptedItem(
            DetectionType.CORRECTION, f"T {HOSTILE}", f"C {HOSTILE}", f"Q {HOSTILE}", "workflow", (HOSTILE,), 0.9
        )
        store.replace_sessions(con, [extraction("s1", hostile)])
        printed = render_text(verification_report(con))
    assert not any(ord(char) < 32 and char != "\n" for char in printed)
    assert "\x1b" not in printed and "\x07" not in printed and "\u202e" not in printed


def test_an_oversized_response_is_refused_and_counted() -> None:
    huge = message(
        [
            {"type": "text", "text": "x" * 3_000_000},
            {"type": "tool_use", "id": "toolu_1", "name": "record_knowledge", "input": {"items": []}},
        ]
    )
    replay = AnthropicReplay([huge, tool_reply([])])
    output = started(replay).process(SESSION, transcript(user(SAID), assistant(text("Understood."))))
    assert output.issues["llm_response_too_large"] == 1
    assert len(replay.requests) == 2 and len(replay.requests[1].raw) < 100_000


def test_the_repair_call_does_not_send_a_huge_answer_back() -> None:
    # Not an items list, so nothing can be salvaged from it and only a repair call helps.
    huge_input = {"items": "q" * 150_000}
    bad = message([{"type": "tool_use", "id": "toolu_1", "name": "record_knowledge", "input": huge_input}])
    replay = AnthropicReplay([bad, tool_reply([])])
    output = started(replay).process(SESSION, transcript(user(SAID), assistant(text("Understood."))))
    assert len(replay.requests) == 2 and len(replay.requests[1].raw) < 100_000
    assert output.counters["llm_repaired"] == 1


@pytest.mark.parametrize(
    ("usage", "reason"),
    [({"input_tokens": 10**20}, "too_large"), ({"output_tokens": -5}, "negative")],
)
def test_token_counts_from_the_response_are_validated(usage: dict[str, int], reason: str) -> None:
    replay = AnthropicReplay([tool_reply([], **usage)])
    processor = started(replay)
    output = processor.process(SESSION, transcript(user(SAID), assistant(text("Understood."))))
    assert output.issues["llm_usage_invalid"] == 1, reason
    assert 0 < output.counters["llm_tokens"] < 100_000
    assert 0 < processor.budget.tokens_used < 100_000


# --- 7. data minimisation ---------------------------------------------------------------------------------------
IMAGE = base64.b64encode(b"an image of a screen" * 10).decode()
ALLOWED = {"CANARY_TYPED", "CANARY_ARGS", "CANARY_BANG", "CANARY_ASSISTANT", "CANARY_BLOCK_TYPED"}


def every_kind_of_line() -> bytes:
    """A session holding every kind of line and content Claude Code writes, each with its own canary."""
    envelope = {
        "cwd": "/home/alice/CANARY_PATH",
        "gitBranch": "CANARY_BRANCH",
        "sessionId": "CANARY_SESSION_ID",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "version": "2.0.28",
        "userType": "external",
    }
    lines: list[dict[str, Any]] = [
        {"type": "summary", "summary": "CANARY_SUMMARY", "leafUuid": "u0"},
        {"type": "file-history-snapshot", "messageId": "m", "snapshot": {"trackedFileBackups": {"CANARY_FHS": {}}}},
        {**envelope, "type": "system", "subtype": "compact_boundary", "content": "CANARY_SYSTEM"},
        user("CANARY_COMPACT summary of the earlier conversation", isCompactSummary=True, **envelope),
        user("Please follow CANARY_TYPED for every change.", uuid="CANARY_UUID", **envelope),
        user(
            "<command-name>/deploy</command-name><command-message>CANARY_COMMAND_MESSAGE</command-message>"
            "<command-args>CANARY_ARGS now</command-args>",
            **envelope,
        ),
        user([text("CANARY_META expanded skill prompt")], isMeta=True, **envelope),
        user("<bash-input>echo CANARY_BANG</bash-input>", **envelope),
        user("<bash-stdout>CANARY_BASH_STDOUT</bash-stdout><bash-stderr>CANARY_BASH_STDERR</bash-stderr>", **envelope),
        user("<local-command-stdout>CANARY_LOCAL_STDOUT</local-command-stdout>", **envelope),
        user(
            [
                text("Look at this CANARY_BLOCK_TYPED screenshot"),
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE}},
                text("<system-reminder>CANARY_REMINDER</system-reminder>"),
            ],
            **envelope,
        ),
        assistant(
            {"type": "thinking", "thinking": "CANARY_THINKING", "signature": "CANARY_SIGNATURE"},
            {"type": "redacted_thinking", "data": "CANARY_REDACTED_THINKING"},
            text("I will follow CANARY_ASSISTANT."),
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/CANARY_TOOL_INPUT"}},
            message_id="CANARY_MESSAGE_ID",
            requestId="CANARY_REQUEST_ID",
            **envelope,
        ),
        user(
            [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "CANARY_FILE_CONTENT"}],
            toolUseResult={"file": {"filePath": "/CANARY_RESULT_PATH", "content": "CANARY_TOOL_RESULT"}},
            **envelope,
        ),
        user("<user-prompt-submit-hook>CANARY_HOOK</user-prompt-submit-hook>[Request interrupted by user]", **envelope),
        {**user("CANARY_SIDECHAIN brief for the subagent", **envelope), "isSidechain": True},
        {**assistant(text("CANARY_SIDECHAIN_ANSWER"), message_id="m2", **envelope), "isSidechain": True},
    ]
    return transcript(*lines)


def canaries_sent(replay: AnthropicReplay) -> set[str]:
    import re

    return set(re.findall(r"CANARY_[A-Z_]+", sent(replay)))


def test_only_the_allowed_kinds_of_text_reach_the_api() -> None:
    output, replay = process(every_kind_of_line())
    assert len(replay.requests) == 1
    assert canaries_sent(replay) == ALLOWED
    assert IMAGE[:40] not in sent(replay)
    assert SESSION.key not in sent(replay) and "alice" not in sent(replay)
    assert output.items == 0


def test_user_only_sends_no_assistant_text() -> None:
    _, replay = process(every_kind_of_line(), config={"send": "user-only"})
    assert canaries_sent(replay) == ALLOWED - {"CANARY_ASSISTANT"}
