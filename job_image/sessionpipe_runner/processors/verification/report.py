"""``sessionpipe report verification``: knowledge items with their evidence counts and sources."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sessionpipe_runner.names import printable
from sessionpipe_runner.processors.verification.store import EVIDENCE, ITEMS
from sessionpipe_runner.reports import Report, require_table

if TYPE_CHECKING:
    import duckdb

QUOTE_PREVIEW = 160


def verification_report(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Every item (most evidence first) with its evidence: the session, user and quote of each."""
    items: dict[str, dict[str, Any]] = {}
    for row in con.execute(
        f"""
        SELECT i.item_id, i.detection_type, i.title, i.content, i.domain, i.entities, i.confidence,
               epoch_ms(i.first_seen_at), epoch_ms(i.last_seen_at), count(e.evidence_id) AS evidence_count,
               count(DISTINCT e.session_file) AS session_count
        FROM {ITEMS} i LEFT JOIN {EVIDENCE} e USING (item_id)
        GROUP BY ALL
        ORDER BY evidence_count DESC, i.confidence DESC, i.title, i.item_id
        """
    ).fetchall():
        items[row[0]] = {
            "id": row[0],
            "detection_type": row[1],
            "title": row[2],
            "content": row[3],
            "domain": row[4],
            "entities": list(row[5]),
            "confidence": row[6],
            "first_seen": _iso(row[7]),
            "last_seen": _iso(row[8]),
            "evidence_count": row[9],
            "session_count": row[10],
            "sources": [],
        }
    for item, session_file, user_name, project, quote, extracted_at in con.execute(
        f"SELECT item_id, session_file, user_name, project, user_quote, epoch_ms(extracted_at) FROM {EVIDENCE} "
        "ORDER BY item_id, extracted_at, session_file, user_quote"
    ).fetchall():
        if item in items:
            items[item]["sources"].append(
                {
                    "session_file": session_file,
                    "user": user_name,
                    "project": project,
                    "quote": quote,
                    "extracted_at": _iso(extracted_at),
                }
            )
    by_type: dict[str, int] = {}
    for entry in items.values():
        by_type[entry["detection_type"]] = by_type.get(entry["detection_type"], 0) + 1
    return {
        "items": list(items.values()),
        "totals": {
            "items": len(items),
            "evidence": sum(entry["evidence_count"] for entry in items.values()),
            "by_detection_type": dict(sorted(by_type.items())),
        },
    }


def _iso(epoch_ms: int) -> str:
    # Timestamps leave DuckDB as epoch milliseconds: a TIMESTAMPTZ value would need pytz in Python.
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat()


def _preview(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= QUOTE_PREVIEW else text[: QUOTE_PREVIEW - 1] + "…"


def render_text(data: dict[str, Any]) -> str:
    """The report for a terminal: one block per item, its sources indented below it."""
    totals = data["totals"]
    if not totals["items"]:
        return "no knowledge items yet"
    kinds = ", ".join(f"{kind} {count}" for kind, count in totals["by_detection_type"].items())
    lines = [f"{totals['items']} knowledge items ({kinds}), {totals['evidence']} pieces of evidence", ""]
    for item in data["items"]:
        lines.append(
            f"[{item['detection_type']}] {item['title']}  ({item['domain']}, confidence {item['confidence']:.2f}, "
            f"evidence {item['evidence_count']} in {item['session_count']} session(s))"
        )
        lines.append(f"    {_preview(item['content'])}")
        for source in item["sources"]:
            lines.append(f'    - {printable(source["session_file"])}: "{_preview(source["quote"])}"')
        lines.append("")
    return "\n".join(lines).rstrip()


class VerificationReport(Report):
    """``sessionpipe report verification``: every knowledge item with its evidence."""

    help = "extracted knowledge items with their evidence"

    def build(self, con: duckdb.DuckDBPyConnection, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
        require_table(con, ITEMS, "verification")
        data = verification_report(con)
        return data, render_text(data)
