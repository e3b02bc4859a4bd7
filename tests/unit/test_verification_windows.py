"""Whole conversations: long sessions read in overlapping windows, growing sessions paid once per turn."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from sessionpipe_runner.processors.verification import VerificationProcessor
from tests.anthropic_replay import AnthropicReplay, Reply, item, tool_reply
from tests.support.db import rows
from tests.unit.test_verification_processor import run_once, write_session

MARK = re.compile(r"Turn (\d+) says: [^\n<]*")


def exchanges(count: int, remarks: dict[int, str] | None = None) -> list[tuple[str, str]]:
    """``count`` user/assistant exchanges; user turn ``n`` (1-based, odd) says ``Turn n says: …``."""
    remarks = remarks or {}
    made = []
    for n in range(count):
        turn = 2 * n + 1
        said = f"Turn {turn} says: {remarks.get(turn, f'step note {turn}')}"
        made.append((said, f"Reply to turn {turn}."))
    return made


def quote_every_correction(body: dict[str, Any]) -> Reply:
    """An item for each user turn in the request that states a correction."""
    text = body["messages"][0]["content"]
    found = [match.group(0).strip() for match in MARK.finditer(text) if "port is" in match.group(0)]
    return tool_reply([item(quote, detection_type="correction", title=quote[:50]) for quote in found])


def quotes(db: Path) -> list[str]:
    return sorted(row[0] for row in rows(db, "SELECT user_quote FROM knowledge_evidence"))


def test_a_300_turn_session_is_read_whole_and_items_from_turn_5_and_turn_295_are_found(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    remarks = {5: "no, the port is 8443", 295: "wrong again, the port is 9443"}
    write_session(sessions / "alice" / "app" / "long.jsonl", exchanges(150, remarks))
    replay = AnthropicReplay(responder=quote_every_correction)
    db = tmp_path / "db.duckdb"
    summary = run_once(sessions, db, VerificationProcessor(http_client=replay.client(), sleep=lambda s: None))
    assert summary.processed == 1 and summary.errors == 0, summary.message
    assert quotes(db) == ["Turn 295 says: wrong again, the port is 9443", "Turn 5 says: no, the port is 8443"]
    assert summary.issues["turns_left_out"] == 0
    assert summary.counters["llm_calls"] == len(replay.requests) > 1  # several windows, one call each


def test_a_session_growing_in_ten_steps_sends_each_turn_at_most_twice_and_keeps_earlier_items(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    path = sessions / "alice" / "app" / "growing.jsonl"
    replay = AnthropicReplay(responder=quote_every_correction)
    db = tmp_path / "db.duckdb"
    for step in range(1, 11):  # 5 more exchanges (10 turns) a step; a correction in steps 1 and 6
        write_session(path, exchanges(5 * step, {3: "no, the port is 8443", 53: "no, the port is 9443"}))
        summary = run_once(sessions, db, VerificationProcessor(http_client=replay.client(), sleep=lambda s: None))
        assert summary.processed == 1 and summary.errors == 0, summary.message
    sent: Counter[int] = Counter()
    for request in replay.requests:
        sent.update({int(turn) for turn in re.findall(r"Turn (\d+) says", request.conversation)})
    characters = sum(len(request.conversation) for request in replay.requests)
    print(
        f"growing session, 10 steps, 100 turns: {characters} conversation characters sent, "
        f"max sends of a turn {max(sent.values())}"
    )
    assert max(sent.values()) <= 2, sent.most_common(3)
    assert quotes(db) == ["Turn 3 says: no, the port is 8443", "Turn 53 says: no, the port is 9443"]


class Bumped(VerificationProcessor):
    version: ClassVar[str] = "99.0.0"


def extracted_once(tmp_path: Path) -> tuple[Path, Path, Path, AnthropicReplay]:
    """(sessions root, the session file, the database, the API) after a first run over 20 turns."""
    sessions = tmp_path / "sessions"
    path = sessions / "alice" / "app" / "s.jsonl"
    replay = AnthropicReplay(responder=quote_every_correction)
    db = tmp_path / "db.duckdb"
    write_session(path, exchanges(10, {1: "no, the port is 8443"}))
    run_once(sessions, db, VerificationProcessor(http_client=replay.client(), sleep=lambda s: None))
    return sessions, path, db, replay


def test_a_version_bump_reprocesses_the_whole_session(tmp_path: Path) -> None:
    sessions, path, db, replay = extracted_once(tmp_path)
    write_session(path, exchanges(20, {1: "no, the port is 8443"}))
    before = len(replay.requests)
    run_once(sessions, db, Bumped(http_client=replay.client(), sleep=lambda s: None))
    # From the start again, not from turn 19 where the first run stopped.
    assert "Turn 1 says" in replay.requests[before].conversation
    assert quotes(db) == ["Turn 1 says: no, the port is 8443"]


class DiesBeforeCommit(VerificationProcessor):
    def write(self, con: Any, batch: Any) -> None:
        raise RuntimeError("the run died between the call and the commit")


def test_a_run_dying_between_the_call_and_the_commit_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    sessions, path, db, replay = extracted_once(tmp_path)
    write_session(path, exchanges(20, {1: "no, the port is 8443", 31: "no, the port is 9443"}))
    run_once(sessions, db, DiesBeforeCommit(http_client=replay.client(), sleep=lambda s: None))
    assert quotes(db) == ["Turn 1 says: no, the port is 8443"]  # the first run's items are still there
    run_once(sessions, db, VerificationProcessor(http_client=replay.client(), sleep=lambda s: None))
    assert quotes(db) == ["Turn 1 says: no, the port is 8443", "Turn 31 says: no, the port is 9443"]


def test_turns_beyond_the_window_limit_are_counted_as_left_out(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    write_session(sessions / "alice" / "app" / "long.jsonl", exchanges(150))
    replay = AnthropicReplay(responder=quote_every_correction)
    config = {"max_turns": 40, "context_turns": 4, "max_windows": 2}
    processor = VerificationProcessor(http_client=replay.client(), sleep=lambda s: None)
    summary = run_once(sessions, tmp_path / "db.duckdb", processor, config=config)
    # 300 turns, 36 new ones a window (0-35, 36-71, …, 288-299): the two newest windows read the
    # last 36 + 12 turns, the other 252 are counted.
    assert len(replay.requests) == 2 and summary.issues["turns_left_out"] == 300 - 36 - 12
    assert "Turn 299 says" in replay.requests[-1].conversation
