"""One writer per database: two SessionProcessors running one processor on one DuckDB file.

Each would process every session into the same tables, twice; their runs would also take turns on
the database's Lease. So the oldest of them (by creation time, then name) runs and every other one
is refused with ``InvalidSpec``. When the oldest leaves the database (deleted, or moved to another
file) the next one is reconciled again and runs. The kopf index ``sessionprocessors_by_database``
(:func:`index_entry`) says who writes what without reading the API server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sessionpipe_operator import render
from sessionpipe_operator.k8s import sessionprocessor_path
from sessionpipe_operator.models import SessionProcessorSpec
from sessionpipe_operator.objects import SessionProcessor, valid_spec
from sessionpipe_operator.state import OperatorState

WriterKey = tuple[str, str, str]  # (namespace, processor, database key)
#: What the index holds per writer key: each holder's (creationTimestamp, name).
Holder = tuple[str, str]


def writer_key(namespace: str, spec: SessionProcessorSpec) -> WriterKey:
    """Who counts as the same writer: one processor on one database file, in one namespace."""
    return (namespace, spec.processor, render.database_key(spec.database.claim_name, spec.database.path))


def index_entry(namespace: str, name: str, created: str, spec: Mapping[str, Any]) -> dict[WriterKey, Holder]:
    """The ``sessionprocessors_by_database`` index entry of one SessionProcessor (none while its spec is invalid)."""
    parsed = valid_spec(spec)
    if parsed is None:
        return {}
    return {writer_key(namespace, parsed): (created, name)}


def holders(by_database: Any, writer: WriterKey) -> list[Holder]:
    return list(by_database[writer]) if writer in by_database else []


def older_rival(by_database: Any, writer: WriterKey, name: str, created: str) -> str | None:
    """The oldest *other* processor writing the same database with the same processor, if older than us."""
    rivals = sorted((stamp, holder) for stamp, holder in holders(by_database, writer) if holder != name)
    if rivals and rivals[0] < (created, name):
        return rivals[0][1]
    return None


def rival_message(rival: str, spec: SessionProcessorSpec) -> str:
    return (
        f"SessionProcessor {rival!r} already runs processor {spec.processor!r} on database "
        f"{spec.database.claim_name}:{spec.database.path}; two writers would process every session twice"
    )


def rivals_to_revisit(
    state: OperatorState, writer: WriterKey, name: str, by_database: Any, *, refused: bool
) -> list[SessionProcessor]:
    """The other processors on ``writer`` to reconcile again: the ``refused`` ones (``name`` left the
    database, so one of them may run now) or the accepted ones (one of them must be refused)."""
    found = []
    for _, holder in holders(by_database, writer):
        if holder == name:
            continue
        body = state.client.get(sessionprocessor_path(writer[0], holder))
        if body is None:
            continue
        rival = SessionProcessor.parse(body)
        if (rival.invalid is not None) == refused:
            found.append(rival)
    return found
