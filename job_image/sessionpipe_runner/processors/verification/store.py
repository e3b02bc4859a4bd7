"""Knowledge items and their evidence in DuckDB: ids, merging, and replacing a session's evidence.

- ``knowledge_items``: one row per piece of knowledge. Its id is derived from its content (detection
  type, normalised title and content), so the same item found twice is one row.
- ``knowledge_evidence``: one row per (session file, item, quote), with an id derived from those
  three. Writing a session first deletes that session's evidence, so reprocessing a session (its file
  grew, or the processor's version changed) replaces its evidence instead of adding to it.

A new item that says the same thing as an existing one of the same kind becomes evidence for the
existing item: their *contents* share at least :data:`MERGE_SIMILARITY` of their words and both are
negated or neither is (:func:`negated`). A title is only a name: the same title over opposite
contents ("Deploys go through Helm." / "Deploys never go through Helm.") is two items, and a
contradiction stays visible instead of lending its evidence to the other side. Corrections never
merge that way: two corrections that read alike may still correct different things, so only an
identical correction (same id) is the same item. Items left with no evidence are deleted.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sessionpipe_runner import tables
from sessionpipe_runner.migrations import Migration
from sessionpipe_runner.processors.verification.schema import DetectionType

if TYPE_CHECKING:
    import duckdb

ITEMS = "knowledge_items"
EVIDENCE = "knowledge_evidence"
MERGE_SIMILARITY = 0.8
ID_LENGTH = 32

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_knowledge",
        f"""
        CREATE TABLE IF NOT EXISTS {ITEMS} (
            item_id          VARCHAR PRIMARY KEY,
            detection_type   VARCHAR NOT NULL,
            title            VARCHAR NOT NULL,
            content          VARCHAR NOT NULL,
            domain           VARCHAR NOT NULL,
            entities         VARCHAR[] NOT NULL,
            confidence       DOUBLE NOT NULL,
            normalised_title VARCHAR NOT NULL,
            first_seen_at    TIMESTAMPTZ NOT NULL,
            last_seen_at     TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE IF NOT EXISTS {EVIDENCE} (
            evidence_id       VARCHAR PRIMARY KEY,
            item_id           VARCHAR NOT NULL,
            session_file      VARCHAR NOT NULL,
            user_name         VARCHAR NOT NULL,
            project           VARCHAR NOT NULL,
            session_id        VARCHAR NOT NULL,
            detection_type    VARCHAR NOT NULL,
            user_quote        VARCHAR NOT NULL,
            extracted_title   VARCHAR NOT NULL,
            extracted_content VARCHAR NOT NULL,
            model             VARCHAR NOT NULL,
            run_id            VARCHAR NOT NULL,
            extracted_at      TIMESTAMPTZ NOT NULL
        );
        """,
    ),
)


@dataclass(frozen=True)
class AcceptedItem:
    """An extracted item whose quote was found in the user's own words."""

    detection_type: DetectionType
    title: str
    content: str
    user_quote: str
    domain: str
    entities: tuple[str, ...]
    confidence: float


@dataclass(frozen=True)
class SessionExtraction:
    """What one session contributes: its items and where they came from."""

    session_file: str
    user_name: str
    project: str
    session_id: str
    model: str
    run_id: str
    extracted_at: datetime
    items: tuple[AcceptedItem, ...]


_WORD = re.compile(r"[^\W_]+")


def normalise(text: str) -> str:
    """Lower case, accents and punctuation gone, one space between words: for ids and comparisons."""
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(char for char in text if not unicodedata.combining(char))
    return " ".join(_WORD.findall(text))


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:ID_LENGTH]


def item_id(detection_type: str, title: str, content: str) -> str:
    """The id of an item: the same kind, title and content (normalised) give the same id."""
    return _digest("item", detection_type, normalise(title), normalise(content))


def evidence_id(session_file: str, item: str, quote: str) -> str:
    """The id of one piece of evidence: a session, an item and a quote (whitespace-normalised)."""
    return _digest("evidence", session_file, item, " ".join(quote.split()))


def word_set(*texts: str) -> frozenset[str]:
    return frozenset(word for text in texts for word in normalise(text).split())


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard similarity of two word sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


#: Words that turn a statement into its opposite (after :func:`normalise`, "don't" is "don t").
_NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nothing", "nor", "neither", "cannot", "without", "avoid", "t", "instead"}
)


def negated(words: frozenset[str]) -> bool:
    """Whether a statement's words hold a negation ("never", "not", "don't", "avoid"…)."""
    return not words.isdisjoint(_NEGATIONS)


@dataclass(frozen=True)
class KnownItem:
    """An existing item, as far as merging needs to know it."""

    item_id: str
    detection_type: str
    normalised_title: str
    #: The words of the item's content: what it says, which decides a merge.
    words: frozenset[str]


def find_duplicate(item: AcceptedItem, known: Iterable[KnownItem]) -> str | None:
    """The id of an existing item ``item`` should merge into, or None.

    Same kind only, never for corrections; the existing item whose content is most similar, at or
    above :data:`MERGE_SIMILARITY`, with the same polarity (both negated or neither).
    """
    if item.detection_type is DetectionType.CORRECTION:
        return None
    words = word_set(item.content)
    best: tuple[float, str] | None = None
    for other in known:
        if other.detection_type != item.detection_type.value or negated(other.words) != negated(words):
            continue
        score = similarity(words, other.words)
        if score >= MERGE_SIMILARITY and (best is None or score > best[0]):
            best = (score, other.item_id)
    return best[1] if best else None


def _known_items(con: duckdb.DuckDBPyConnection) -> dict[str, KnownItem]:
    rows = con.execute(
        f"SELECT item_id, detection_type, normalised_title, content FROM {ITEMS} WHERE detection_type <> ?",
        [DetectionType.CORRECTION.value],
    ).fetchall()
    return {row[0]: KnownItem(row[0], row[1], row[2], word_set(row[3])) for row in rows}


def _item_exists(con: duckdb.DuckDBPyConnection, item: str) -> bool:
    return con.execute(f"SELECT count(*) FROM {ITEMS} WHERE item_id = ?", [item]).fetchone() == (1,)


def _delete_evidence(con: duckdb.DuckDBPyConnection, session_files: Sequence[str]) -> list[str]:
    """Delete the sessions' evidence; return the items it pointed at."""
    touched = [
        row[0]
        for row in con.execute(
            f"SELECT DISTINCT item_id FROM {EVIDENCE} WHERE session_file = ANY(?)", [list(session_files)]
        ).fetchall()
    ]
    con.execute(f"DELETE FROM {EVIDENCE} WHERE session_file = ANY(?)", [list(session_files)])
    return touched


def _delete_orphans(con: duckdb.DuckDBPyConnection, items: Sequence[str]) -> None:
    if items:
        con.execute(
            f"DELETE FROM {ITEMS} WHERE item_id = ANY(?) AND item_id NOT IN (SELECT item_id FROM {EVIDENCE})",
            [list(items)],
        )


def replace_sessions(
    con: duckdb.DuckDBPyConnection, extractions: Sequence[SessionExtraction], keep_existing: Collection[str] = ()
) -> int:
    """Replace the evidence of these sessions with their new items; returns evidence rows written.

    The sessions in ``keep_existing`` (read incrementally) keep their evidence and gain the new
    items, except those whose quote the session already has. Runs inside the caller's transaction.
    """
    touched = _delete_evidence(
        con, [extraction.session_file for extraction in extractions if extraction.session_file not in keep_existing]
    )
    quoted = _quotes(con, keep_existing)
    known = _known_items(con)
    evidence: dict[str, tuple[object, ...]] = {}
    for extraction in extractions:
        for item in extraction.items:
            exact = item_id(item.detection_type.value, item.title, item.content)
            target = exact if exact in known or _item_exists(con, exact) else find_duplicate(item, known.values())
            if target is None:
                target = exact
                con.execute(
                    f"INSERT INTO {ITEMS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        exact,
                        item.detection_type.value,
                        item.title,
                        item.content,
                        item.domain,
                        list(item.entities),
                        item.confidence,
                        normalise(item.title),
                        extraction.extracted_at,
                        extraction.extracted_at,
                    ],
                )
                if item.detection_type is not DetectionType.CORRECTION:
                    known[exact] = KnownItem(
                        exact, item.detection_type.value, normalise(item.title), word_set(item.content)
                    )
            else:
                con.execute(
                    f"UPDATE {ITEMS} SET last_seen_at = greatest(last_seen_at, ?) WHERE item_id = ?",
                    [extraction.extracted_at, target],
                )
            key = evidence_id(extraction.session_file, target, item.user_quote)
            if (extraction.session_file, " ".join(item.user_quote.split())) in quoted:
                continue
            evidence[key] = (
                key,
                target,
                extraction.session_file,
                extraction.user_name,
                extraction.project,
                extraction.session_id,
                item.detection_type.value,
                item.user_quote,
                item.title,
                item.content,
                extraction.model,
                extraction.run_id,
                extraction.extracted_at,
            )
    tables.insert_rows(con, EVIDENCE, list(evidence.values()))
    _delete_orphans(con, touched)
    return len(evidence)


def _quotes(con: duckdb.DuckDBPyConnection, session_files: Collection[str]) -> set[tuple[str, str]]:
    """(session file, whitespace-normalised quote) of the evidence these sessions already have."""
    if not session_files:
        return set()
    rows = con.execute(
        f"SELECT session_file, user_quote FROM {EVIDENCE} WHERE session_file = ANY(?)", [list(session_files)]
    ).fetchall()
    return {(session_file, " ".join(quote.split())) for session_file, quote in rows}


def forget_sessions(con: duckdb.DuckDBPyConnection, session_files: Sequence[str]) -> None:
    """Remove the sessions' evidence, and the items no other session supports."""
    _delete_orphans(con, _delete_evidence(con, session_files))
