"""``mode: batch``: the sessions that need work go out as one Message Batch, and later runs collect.

The Message Batches API answers within 24 hours at half the price. A run in batch mode:

- for a session with no request on its way, gathers its windows' requests and raises
  :class:`~sessionpipe_runner.processors.base.Pending` (the session is neither done nor failed, so it
  is a candidate again next run); at the end of the run (:meth:`BatchMode.finish`) they are
  submitted as one batch, and the batch id and each request's ``custom_id`` are recorded in
  ``verification_batch_requests``, in the same transaction;
- for a session with requests on their way: while the batch is in progress, ``Pending`` again; once
  it has ended, its results are read and the session is processed like an answered one. The
  session's rows in ``verification_batch_requests`` are deleted in the transaction that stores its
  result, so a run killed between reading the results and that commit leaves them in place and the
  next run reads the same results again (they stay available for 29 days);
- a request that expired, errored or is missing from the results fails the session (an attempt,
  quarantined after the usual number) and its rows are dropped, so the next run submits it again;
- a session whose content or processor version changed while its request was pending is
  submitted anew: the old result is never stored (``batch_result_stale``).

If the run dies after submitting a batch but before recording it, the batch's results are never
read and its sessions are submitted again next run: paid twice, nothing lost.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from anthropic.types import Message

from sessionpipe_runner.migrations import Migration
from sessionpipe_runner.processors.base import Pending
from sessionpipe_runner.processors.verification.llm import LLMError

if TYPE_CHECKING:
    import anthropic
    import duckdb

REQUESTS = "verification_batch_requests"

MIGRATION = Migration(
    "0003_verification_batch_requests",
    f"""
    CREATE TABLE IF NOT EXISTS {REQUESTS} (
        session_file      VARCHAR NOT NULL,
        window_index      INTEGER NOT NULL,
        custom_id         VARCHAR NOT NULL,
        batch_id          VARCHAR NOT NULL,
        content_hash      VARCHAR NOT NULL,
        processor_version VARCHAR NOT NULL,
        submitted_at      TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (session_file, window_index)
    );
    """,
)


@dataclass(frozen=True)
class Submitted:
    """One request on its way: the batch it went out in, and what it was made from."""

    custom_id: str
    batch_id: str
    content_hash: str
    processor_version: str


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def custom_id(session_file: str, digest: str, window: int) -> str:
    """A ``custom_id`` (``[a-zA-Z0-9_-]{1,64}``) naming one window of one version of a session."""
    return f"s{hashlib.sha256(session_file.encode()).hexdigest()[:24]}-{digest[:16]}-w{window}"


class BatchMode:
    """The batch flow of one run: requests on their way, what to submit, what to drop."""

    def __init__(self, client: anthropic.Anthropic, version: str, con: duckdb.DuckDBPyConnection | None) -> None:
        self.client = client
        self.version = version
        self.submitted: dict[str, list[Submitted]] = {}
        if con is not None:
            for session_file, _, cid, batch_id, digest, version_then in con.execute(
                f"SELECT session_file, window_index, custom_id, batch_id, content_hash, processor_version "
                f"FROM {REQUESTS} ORDER BY session_file, window_index"
            ).fetchall():
                self.submitted.setdefault(session_file, []).append(Submitted(cid, batch_id, digest, version_then))
        self._lock = threading.Lock()
        self._status: dict[str, str] = {}  # batch id -> processing status, asked once per run
        self._results: dict[str, dict[str, Any]] = {}  # batch id -> custom id -> result
        self._to_submit: list[tuple[str, int, str, str, dict[str, Any]]] = []  # (session, window, id, hash, params)
        self._dropped: set[str] = set()
        self.issues: Counter[str] = Counter()  # reported by finish()

    def collect(self, session_file: str, data: bytes, params: Sequence[dict[str, Any]]) -> list[Message]:
        """The answers to this session's requests, or :class:`Pending` (submitting them if needed).

        Raises :class:`~.llm.LLMError` for a request that expired or errored (it is submitted again
        on the next run).
        """
        digest = content_hash(data)
        on_way = self.submitted.get(session_file, [])
        current = [one for one in on_way if one.content_hash == digest and one.processor_version == self.version]
        if on_way and len(current) != len(params):
            with self._lock:  # counted here: a Pending session's own output is not kept
                self.issues["batch_result_stale"] += 1  # changed, or the processor's version did
            current = []
        if not current:
            self._queue(session_file, digest, params)
            raise Pending(f"{len(params)} request(s) go out in this run's Message Batch")
        answers = []
        for one in current:
            if self._batch_status(one.batch_id) != "ended":
                raise Pending(f"Message Batch {one.batch_id} is still in progress")
            result = self._batch_results(one.batch_id).get(one.custom_id)
            kind = result.get("type") if result else "missing"
            if kind != "succeeded" or result is None:
                with self._lock:
                    self._dropped.add(session_file)
                raise LLMError(f"the batch request {one.custom_id} in {one.batch_id} ended {kind}; it is sent again")
            answers.append(Message.model_validate(result["message"]))
        return answers

    def _queue(self, session_file: str, digest: str, params: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            self._dropped.add(session_file)
            for window, request in enumerate(params):
                self._to_submit.append((session_file, window, custom_id(session_file, digest, window), digest, request))

    def _batch_status(self, batch_id: str) -> str:
        with self._lock:
            if batch_id not in self._status:
                self._status[batch_id] = self.client.messages.batches.retrieve(batch_id).processing_status
            return self._status[batch_id]

    def _batch_results(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            if batch_id not in self._results:
                self._results[batch_id] = {
                    line.custom_id: line.result.model_dump(mode="json")
                    for line in self.client.messages.batches.results(batch_id)
                }
            return self._results[batch_id]

    def finish(self, con: duckdb.DuckDBPyConnection) -> Counter[str]:
        """Submit what this run gathered as one batch and record it; drop the requests that ended badly."""
        issues = self.issues
        forget(con, sorted(self._dropped))
        if not self._to_submit:
            return issues
        # The params are the same request the Messages mode sends (ExtractionClient.params).
        requests: Any = [{"custom_id": cid, "params": request} for _, _, cid, _, request in self._to_submit]
        batch = self.client.messages.batches.create(requests=requests)
        now = datetime.now(UTC)
        con.executemany(
            f"INSERT INTO {REQUESTS} VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (session, window, cid, batch.id, digest, self.version, now)
                for session, window, cid, digest, _ in self._to_submit
            ],
        )
        issues["batch_requests_submitted"] += len(self._to_submit)
        return issues


def forget(con: duckdb.DuckDBPyConnection, session_files: Sequence[str]) -> None:
    """Forget the sessions' requests (their result is stored, or they are to be sent again)."""
    if session_files:
        con.execute(f"DELETE FROM {REQUESTS} WHERE session_file = ANY(?)", [list(session_files)])
