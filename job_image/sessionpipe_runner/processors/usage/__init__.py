"""The built-in ``usage`` processor: token and cost accounting from transcripts, in agreement with ccusage.

Each session file becomes one row per kept usage line in ``usage_rows`` (see :mod:`.parse`), with
its cost computed at processing time from the price table (:mod:`.pricing`). Deduplication is not
done per file: the same API call appears in resumed and copied sessions, snapshots and sidechain
replays, across files and users, so the view ``usage_messages`` keeps one row per call over the
whole table at query time, with ccusage 20.0.24's rule, except that a file still on the volume wins
over one that vanished (whose rows are kept as history). ``usage_sessions`` summarises each session
from that view; :mod:`.report` makes the ccusage-compatible reports.

Settings: ``pricing`` (in ``spec.config`` / ``--config``) or ``SESSIONPIPE_PRICING`` names a price
file whose entries replace or add to the shipped ones.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from sessionpipe_contract import ENV_PRICING
from sessionpipe_runner import reading
from sessionpipe_runner import tables as table_writes
from sessionpipe_runner.processors.base import (
    BadSettings,
    Migration,
    Output,
    Processor,
    ReadAndProcessed,
    RunContext,
    SessionFile,
    replace_session_rows,
)

# Not .parse (the Python reading, with msgspec): a run that reads with the compiled parser only
# needs it for a line the compiled one hands back (:func:`read_line_outcome`).
from sessionpipe_runner.processors.usage import columns, lines
from sessionpipe_runner.processors.usage.lines import UsageLine, parse_timestamp
from sessionpipe_runner.processors.usage.native import compiled_reading
from sessionpipe_runner.processors.usage.pricing import (
    ModelPrice,
    PriceTable,
    PricingError,
    call_cost,
    load_prices,
    shipped_version,
)

if TYPE_CHECKING:
    import duckdb

    from sessionpipe_runner.reports import Report

__all__ = ["PricingError", "UsageProcessor"]

COST_FROM_TRANSCRIPT = "transcript"  # costUSD written by Claude Code, which ccusage's default mode prefers
COST_FROM_PRICES = "prices"
COST_UNPRICED = "unpriced"  # no price for the model: cost 0, as ccusage reports it

TOKENS_SUM = "input_tokens + output_tokens + cache_write_5m_tokens + cache_write_1h_tokens + cache_read_tokens"

#: One row per API call, globally (ccusage 20.0.24): the key is (message id, request id or none);
#: rows without a message id are never merged. Within a key a row from a live file wins over one
#: from a file that vanished from the volume (its rows are kept as history: a renamed file must
#: report as in a fresh database, where only the new name exists); then the non-sidechain row, then
#: the one with the most tokens (streaming snapshots carry partial output), then the earliest.
USAGE_MESSAGES = f"""
CREATE OR REPLACE VIEW usage_messages AS
SELECT * EXCLUDE (dedup_rank, from_vanished_file) FROM (
    SELECT *,
        CASE WHEN message_id IS NULL THEN 1 ELSE row_number() OVER (
            PARTITION BY message_id, request_id
            ORDER BY from_vanished_file, is_sidechain, {TOKENS_SUM} DESC, ts, session_file, line_no
        ) END AS dedup_rank
    FROM (
        SELECT *, session_file IN (
            SELECT session_file FROM session_processor_state WHERE processor = 'usage' AND vanished_at IS NOT NULL
        ) AS from_vanished_file
        FROM usage_rows
    )
) WHERE dedup_rank = 1;
"""

SCHEMA = f"""
CREATE TABLE usage_rows (
    session_file           VARCHAR NOT NULL,
    line_no                INTEGER NOT NULL,
    user_name              VARCHAR NOT NULL,
    project                VARCHAR NOT NULL,
    session_id             VARCHAR NOT NULL,
    transcript_session_id  VARCHAR,
    cwd                    VARCHAR,
    git_branch             VARCHAR,
    agent_id               VARCHAR,
    is_sidechain           BOOLEAN NOT NULL,
    model                  VARCHAR,
    message_id             VARCHAR,
    request_id             VARCHAR,
    ts                     TIMESTAMPTZ NOT NULL,
    input_tokens           BIGINT NOT NULL,
    output_tokens          BIGINT NOT NULL,
    cache_write_5m_tokens  BIGINT NOT NULL,
    cache_write_1h_tokens  BIGINT NOT NULL,
    cache_read_tokens      BIGINT NOT NULL,
    web_search_requests    BIGINT NOT NULL,
    speed                  VARCHAR,
    cost_usd               DOUBLE NOT NULL,
    cost_source            VARCHAR NOT NULL,
    pricing_version        VARCHAR NOT NULL,
    claude_version         VARCHAR
);

-- One row per API call, globally (ccusage 20.0.24); migration 0003 replaces this with USAGE_MESSAGES.
CREATE VIEW usage_messages AS
SELECT * EXCLUDE (dedup_rank) FROM (
    SELECT *,
        CASE WHEN message_id IS NULL THEN 1 ELSE row_number() OVER (
            PARTITION BY message_id, request_id
            ORDER BY is_sidechain, {TOKENS_SUM} DESC, ts, session_file, line_no
        ) END AS dedup_rank
    FROM usage_rows
) WHERE dedup_rank = 1;

CREATE VIEW usage_sessions AS
SELECT
    user_name,
    project,
    session_id,
    min(ts) AS first_activity,
    max(ts) AS last_activity,
    count(*) AS calls,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_write_5m_tokens + cache_write_1h_tokens) AS cache_write_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum({TOKENS_SUM}) AS total_tokens,
    sum(web_search_requests) AS web_search_requests,
    sum(cost_usd) AS cost_usd,
    list_sort(list_distinct(list(model) FILTER (WHERE model IS NOT NULL))) AS models
FROM usage_messages
GROUP BY user_name, project, session_id;
"""


# Databases made by earlier builds have an index on usage_rows.session_file. It cost more on every insert
# than it saved on the per-batch DELETE, which scans one column whose rows arrive in key order.
DROP_INDEX = "DROP INDEX IF EXISTS usage_rows_session_file;"


def read_line_outcome(line_no: int, raw: bytes) -> UsageLine | str | None:
    """:func:`.parse.read_line_outcome`, importing the Python reading at the first line that needs it."""
    from sessionpipe_runner.processors.usage.parse import read_line_outcome as read

    return read(line_no, raw)


def has_tokens(line: UsageLine) -> bool:
    """Whether a call used any token (a call with none needs no price, as in ccusage)."""
    return bool(
        line.input_tokens
        or line.output_tokens
        or line.cache_write_5m_tokens
        or line.cache_write_1h_tokens
        or line.cache_read_tokens
    )


class UsageProcessor(Processor):
    """Per-call token and cost rows, deduplicated at query time, with ccusage-compatible reports."""

    name: ClassVar[str] = "usage"
    #: The shipped price file's version is part of it, so a price update recomputes stored costs.
    version: ClassVar[str] = f"1+{shipped_version()}"
    tables: ClassVar[Sequence[str]] = ("usage_rows",)
    batchable: ClassVar[bool] = True
    parallel: ClassVar[bool] = True
    #: A usage line's row depends on that line alone; calls are deduplicated at query time.
    appendable: ClassVar[bool] = True
    #: :meth:`write` calls :func:`replace_session_rows`, which stores what workers converted.
    write_takes_arrow: ClassVar[bool] = True

    def __init__(self) -> None:
        self.prices: PriceTable | None = None
        #: Whether the table held rows when the run started (:meth:`start`); until then, assumed.
        self.rows_stored = True
        #: The compiled parser :meth:`start` chose (``None``: reading in Python).
        self.compiled: ModuleType | None = None

    def migrations(self) -> Sequence[Migration]:
        return (
            Migration("0001_usage_rows", SCHEMA),
            Migration("0002_drop_session_file_index", DROP_INDEX),
            Migration("0003_live_files_win_ties", USAGE_MESSAGES),
        )

    def report(self) -> Report:
        """``sessionpipe report usage``: the ccusage-compatible reports (:mod:`.report`)."""
        from sessionpipe_runner.processors.usage.report import UsageReport

        return UsageReport()

    def start(self, context: RunContext) -> None:
        """Load the prices: the shipped file, with the user's ``pricing`` file (setting or env) over it."""
        configured = context.config.get("pricing") or context.environ.get(ENV_PRICING) or None
        if configured is not None and not isinstance(configured, str):
            raise BadSettings(f"the 'pricing' setting must be a file path, not {configured!r}")
        try:
            self.prices = load_prices(Path(configured) if configured else None)
        except PricingError as error:
            raise BadSettings(str(error)) from None
        # The compiled reading's rows are columns that cannot be pickled, and it parses without the
        # GIL: its workers are threads, beside the runner's writes (:mod:`sessionpipe_runner.work`).
        self.compiled = compiled_reading()  # looked up once: process() runs per file
        self.releases_gil = self.compiled is not None
        # A run that starts with no rows stored has none to replace (it writes each file in one
        # batch): no DELETE per batch, which scans the table it grows (20-80 ms a row group).
        con = context.connection
        self.rows_stored = con is None or con.execute("SELECT 1 FROM usage_rows LIMIT 1").fetchone() is not None

    @staticmethod
    def _priced(prices: PriceTable, line: UsageLine) -> tuple[float, str, bool]:
        """(cost, cost source, whether a price was missing for a call that used tokens).

        (A per-run memo of costs was tried: it hit on a third of the lines, gained nothing
        measurable, and grew with every distinct call, to hundreds of MB on a large volume.)
        """
        price = prices.find(line.model) if line.model else None
        if price is None:
            return 0.0, COST_UNPRICED, has_tokens(line)
        cost = call_cost(
            price,
            line.input_tokens,
            line.output_tokens,
            line.cache_write_5m_tokens,
            line.cache_write_1h_tokens,
            line.cache_read_tokens,
            line.speed,
        )
        return cost, COST_FROM_PRICES, False

    def process(self, session: SessionFile, data: bytes) -> Output:
        """One row per kept usage line; lines left out are counted in ``issues`` by reason.

        After :meth:`start` chose the compiled reading, the rows are columns
        (:class:`.columns.ColumnarOutput`), which :meth:`write` stores a batch at a time.
        """
        if self.compiled is not None:
            return self.columnar_output(self.compiled, session, data, 1)
        return self.process_appended(session, data, 1)

    def process_appended(self, session: SessionFile, data: bytes, first_line: int) -> Output:
        """The rows of ``data``'s lines, numbered from ``first_line`` (the lines appended to a file).

        Read by the compiled parser when it is installed (:mod:`.native`), else in Python; the two
        give the same rows and issues.
        """
        compiled = compiled_reading()
        if compiled is not None:
            return self._compiled_rows(compiled, session, data, first_line)
        from sessionpipe_runner.processors.usage.parse import parse_usage_lines

        parsed = parse_usage_lines(data, first_line=first_line)
        output = Output(issues=parsed.issues)
        rows: list[tuple[Any, ...]] = []
        missing_prices = 0
        for line in parsed.lines:
            row, missing = self._row(session, line)
            rows.append(row)
            missing_prices += missing
        if missing_prices:
            output.issues["missing_price"] += missing_prices
        output.rows["usage_rows"] = rows
        output.items = len(rows)
        return output

    def _price_table(self) -> PriceTable:
        """The prices :meth:`start` loaded; the shipped ones for a processor used without it."""
        if self.prices is None:
            self.prices = load_prices()
        return self.prices

    def _row(self, session: SessionFile, line: UsageLine) -> tuple[tuple[Any, ...], bool]:
        """A kept line's ``usage_rows`` row, and whether its model had no price though it used tokens."""
        prices = self._price_table()
        if line.logged_cost_usd is not None:
            cost, source, missing = line.logged_cost_usd, COST_FROM_TRANSCRIPT, False
        else:
            cost, source, missing = self._priced(prices, line)
        stored = line[1:17]  # transcript_session_id … speed, stored as they are
        # The table's column order: the session, then the line's fields up to speed, then cost.
        row = (session.key, line[0], session.user, session.project, session.session_id, *stored)
        return (*row, cost, source, prices.version, line.claude_version), missing

    def write(self, con: duckdb.DuckDBPyConnection, batch: Sequence[tuple[SessionFile, Output]]) -> None:
        """:func:`replace_session_rows`, then the batch's columnar rows as Arrow tables of about
        :data:`.columns.INSERT_ROWS` rows each (a batch of a whole row group joined at once held a
        second copy of all its rows; the inserts of one transaction still reach DuckDB as one append).

        (An appended tail's rows, a few, stay tuples: a run that appends a line needs no pyarrow.)
        """
        replace_session_rows(con, self.tables, batch, delete=self.rows_stored)
        parts = [o.columns for _, o in batch if isinstance(o, columns.ColumnarOutput) and len(o.columns)]
        for piece in columns.pieces(parts):
            table_writes.insert_arrow(con, "usage_rows", [columns.arrow_table(piece)])

    def columnar_output(self, compiled: Any, session: SessionFile, data: bytes, first_line: int) -> Output:
        """:meth:`process_appended` by the compiled parser, the rows as columns (:mod:`.columns`)."""
        prices = self._price_table()
        rows, issues = compiled.usage_columns(
            data,
            first_line,
            lines.MAX_LINE_BYTES,
            (session.key, session.user, session.project, session.session_id),
            prices.version,
            functools.partial(price_rates, prices),
            columns.timestamp_micros,
            functools.partial(self._columnar_reference, session),
        )
        return _columnar(rows, issues)

    def _columnar_reference(
        self, session: SessionFile, line_no: int, raw: bytes
    ) -> tuple[tuple[Any, ...], bool] | str | None:
        """A line the compiled parser hands back, read the Python way: no usage (``None``), a skip
        reason, or ``(row, missing_price)`` with the row's ``ts`` in microseconds."""
        read = read_line_outcome(line_no, raw)
        if not isinstance(read, UsageLine):
            return read
        row, missing = self._row(session, read)
        return columns.with_micros(row), missing

    def read_and_process(self, sessions: Sequence[SessionFile]) -> list[ReadAndProcessed] | None:
        """New files read and parsed by one compiled call (``usage_files``), when both the compiled
        file reading and the compiled parser are in use (:meth:`Processor.read_and_process`)."""
        compiled = self.compiled
        if compiled is None or reading.compiled_reading() is None or not hasattr(compiled, "usage_files"):
            return None
        prices = self._price_table()

        def reference(index: int, line_no: int, raw: bytes) -> tuple[tuple[Any, ...], bool] | str | None:
            return self._columnar_reference(sessions[index], line_no, raw)

        found = compiled.usage_files(
            [reading.root_and_parts(session.location, session.root) for session in sessions],
            reading.MAX_LINE_BYTES,
            lines.MAX_LINE_BYTES,
            [(session.key, session.user, session.project, session.session_id) for session in sessions],
            prices.version,
            functools.partial(price_rates, prices),
            columns.timestamp_micros,
            reference,
        )
        results: list[ReadAndProcessed] = []
        for session, (what, number, size, mtime_ns, length, line_count, content_hash, rows, issues) in zip(
            sessions, found, strict=True
        ):
            snapshot = reading.compiled_snapshot(
                what, number, size, mtime_ns, length, line_count, content_hash, session.location
            )
            if isinstance(snapshot, reading.Snapshot):
                results.append((snapshot, _columnar(rows, issues)))
            else:
                results.append(snapshot)
        return results

    def _compiled_rows(self, compiled: Any, session: SessionFile, data: bytes, first_line: int) -> Output:
        """:meth:`process_appended` by the compiled parser; lines it cannot decide are read here."""
        prices = self._price_table()

        def reference(line_no: int, raw: bytes) -> tuple[tuple[Any, ...], bool] | str | None:
            read = read_line_outcome(line_no, raw)
            return self._row(session, read) if isinstance(read, UsageLine) else read

        rows, issues = compiled.usage_rows(
            data,
            first_line,
            lines.MAX_LINE_BYTES,  # looked up per call: a test may lower it
            (session.key, session.user, session.project, session.session_id),
            prices.version,
            functools.partial(price_rates, prices),
            parse_timestamp,
            reference,
            datetime,
            UTC,
        )
        output = Output(issues=Counter(issues))
        output.rows["usage_rows"] = rows
        output.items = len(rows)
        return output


def _columnar(rows: Any, issues: dict[str, int]) -> columns.ColumnarOutput:
    """The output of one file's rows as the compiled parser's columns, and its issue counts."""
    return columns.ColumnarOutput(issues=Counter(issues), items=len(rows), columns=rows)


def price_rates(prices: PriceTable, model: str) -> tuple[float | None, ...] | None:
    """The rates of ``model`` as the compiled parser takes them (:class:`.pricing.ModelPrice`'s order)."""
    price: ModelPrice | None = prices.find(model)
    if price is None:
        return None
    return (
        price.input,
        price.output,
        price.cache_write,
        price.cache_read,
        price.input_above_200k,
        price.output_above_200k,
        price.cache_write_above_200k,
        price.cache_read_above_200k,
        price.fast_multiplier,
    )
