"""The ``verification`` processor: an LLM finds what users corrected, confirmed or defined.

For each session: read the conversation from the real transcript format
(:mod:`~sessionpipe_runner.processors.verification.conversation`), cut the turns not yet extracted
into windows (:mod:`~sessionpipe_runner.processors.verification.windows`), remove secrets
(:mod:`~sessionpipe_runner.processors.verification.redaction`), make one strict forced-tool call per
window (:mod:`~sessionpipe_runner.processors.verification.llm`,
:mod:`~sessionpipe_runner.processors.verification.structured`), or collect its answer from a
Message Batch (:mod:`~sessionpipe_runner.processors.verification.batch`), keep the items whose quote
is really in the user's words (:mod:`~sessionpipe_runner.processors.verification.quotes`), clean and
redact what the model returned (:mod:`~sessionpipe_runner.processors.verification.untrusted`), and
store them as knowledge items with evidence (:mod:`~sessionpipe_runner.processors.verification.store`).
Each whole turn is redacted before a long one is shortened. Several sessions' calls may be in flight
at once; what they share is in :mod:`~sessionpipe_runner.processors.verification.concurrency`, and
what they cost in :mod:`~sessionpipe_runner.processors.verification.cost`.

An LLM failure fails the session (it is retried on later runs and quarantined after repeated
failures); it is never recorded as a success with zero items. A session with no user text needs no
call and is done with zero items, noted as ``no_user_text``.

Settings (``spec.config`` / ``--config``, then environment, then default):

=========================  =====================================  ==================================
config key                 environment                            default
=========================  =====================================  ==================================
``model``                  ``SESSIONPIPE_LLM_MODEL``              :data:`DEFAULT_MODEL`
``max_tokens_per_run``     ``SESSIONPIPE_LLM_MAX_TOKENS_PER_RUN`` 0 (no limit)
``max_sessions_per_run``                                          0 (no limit)
``concurrency``                                                   4 (calls in flight at once)
``pricing``                ``SESSIONPIPE_PRICING``                the shipped prices (cost only)
``max_turns``                                                     40 (turns per window)
``context_turns``                                                 4
``max_windows``                                                   25 (per session and run)
``mode``                                                          ``messages`` (or ``batch``)
``send``                                                          ``conversation`` (or ``user-only``)
``max_turn_chars``                                                4000
``max_output_tokens``                                             4096
``max_retries``                                                   5
``timeout_seconds``                                               120
``base_url``               ``ANTHROPIC_BASE_URL``                 the SDK's (api.anthropic.com)
(the API key)              ``ANTHROPIC_API_KEY``                  required
=========================  =====================================  ==================================
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import httpx2
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from sessionpipe_contract import ENV_ANTHROPIC_API_KEY, ENV_LLM_MAX_TOKENS_PER_RUN, ENV_LLM_MODEL
from sessionpipe_runner.processors.base import (
    BadSettings,
    FailRun,
    Migration,
    Output,
    Processor,
    RunContext,
    SessionFile,
)
from sessionpipe_runner.processors.verification import (
    batch,
    concurrency,
    conversation,
    cost,
    llm,
    prompt,
    quotes,
    redaction,
    store,
    untrusted,
    windows,
)
from sessionpipe_runner.processors.verification.concurrency import RunBudget
from sessionpipe_runner.processors.verification.schema import CONFIDENCE, Extraction

if TYPE_CHECKING:
    import duckdb

    from sessionpipe_runner.reports import Report

DEFAULT_MODEL = "claude-sonnet-4-6"  # claude-sonnet-4-5 reaches end of life on 2026-11-30


class VerificationConfigError(ValueError):
    """The processor's settings cannot work (no API key, an unknown or invalid setting)."""


class VerificationSettings(BaseModel):
    """The processor's settings, validated once per run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(default=DEFAULT_MODEL, min_length=1)
    max_tokens_per_run: int = Field(default=0, ge=0)
    max_sessions_per_run: int = Field(default=0, ge=0)
    concurrency: int = Field(default=4, ge=1, le=64)
    pricing: str | None = None  # a price file for llm_cost_microusd (read in cost.prices)
    max_turns: int = Field(default=40, ge=2)  # turns per window, context included
    context_turns: int = Field(default=4, ge=0)  # earlier turns sent before a window's own
    max_windows: int = Field(default=25, ge=1)  # per session and run; older turns beyond are counted
    mode: Literal["messages", "batch"] = "messages"  # batch: the Message Batches API (see .batch)
    #: ``conversation``: user and assistant text; ``user-only``: the user's text alone.
    send: Literal["conversation", "user-only"] = "conversation"
    max_turn_chars: int = Field(default=4000, ge=200)
    max_output_tokens: int = Field(default=4096, ge=256)
    max_retries: int = Field(default=5, ge=0, le=20)
    timeout_seconds: float = Field(default=120.0, gt=0)
    base_url: str | None = None

    @classmethod
    def resolve(cls, config: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[VerificationSettings, str]:
        """Settings from ``config`` over ``environ`` over defaults, and the API key.

        Raises :class:`VerificationConfigError` with one explanatory line.
        """
        merged: dict[str, Any] = {}
        if environ.get(ENV_LLM_MODEL):
            merged["model"] = environ[ENV_LLM_MODEL]
        if environ.get(ENV_LLM_MAX_TOKENS_PER_RUN):
            merged["max_tokens_per_run"] = environ[ENV_LLM_MAX_TOKENS_PER_RUN]
        if environ.get(llm.ENV_BASE_URL):
            merged["base_url"] = environ[llm.ENV_BASE_URL]
        merged.update(config)
        try:
            settings = cls.model_validate(merged)
        except pydantic.ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in problem['loc']) or 'config'}: {problem['msg']}"
                for problem in error.errors()
            )
            raise VerificationConfigError(f"verification settings are not valid: {problems}") from None
        api_key = environ.get(ENV_ANTHROPIC_API_KEY, "").strip()
        if not api_key:
            raise VerificationConfigError(
                f"{ENV_ANTHROPIC_API_KEY} is not set: the verification processor calls the Anthropic API "
                "(in a cluster, set spec.llm.apiKeySecretRef; on a laptop, export the variable)"
            )
        return settings, api_key


@dataclass
class VerificationOutput(Output):
    """A session's output, with the accepted items for :meth:`VerificationProcessor.write`."""

    extraction: store.SessionExtraction | None = None
    #: Only the session's new turns were read: its earlier evidence stays (see :mod:`.windows`).
    incremental: bool = False
    progress: windows.Progress | None = None


@dataclass
class _Prepared:
    """A session's conversation, ready to send."""

    text: str
    user_texts: list[str]
    issues: Counter[str] = field(default_factory=Counter)


def quote_in_user_text(quote: str, user_texts: Sequence[str]) -> bool:
    """Whether ``quote`` backs an item by the rule of :mod:`.quotes`."""
    return quotes.check_quote(quote, user_texts).accepted


def prepare(data: bytes, max_turns: int, max_turn_chars: int) -> _Prepared:
    """The redacted conversation of the last ``max_turns`` turns, and the user texts quotes are checked against."""
    issues: Counter[str] = Counter()
    turns = conversation.extract_turns(data, issues)[-max_turns:]
    prepared = prepare_turns(turns, 0, max_turn_chars)
    prepared.issues.update(issues)
    return prepared


def prepare_turns(turns: Sequence[conversation.Turn], first_source: int, max_turn_chars: int) -> _Prepared:
    """One window to send, redacted; quotes are checked against the user turns from ``first_source`` on.

    Each whole turn is redacted before it is shortened: a cut made first could leave a value
    without the keyword, or the BEGIN line, that identifies it.
    """
    issues: Counter[str] = Counter()
    redactions: Counter[str] = Counter()
    redacted = [conversation.Turn(turn.role, redaction.redact(turn.text, redactions)[0]) for turn in turns]
    cleaned = conversation.window(redacted, 0, max_turn_chars)
    for kind, count in redactions.items():
        issues[f"redacted_{kind}"] += count
    user_texts = [conversation.normalise_space(turn.text) for turn in cleaned[first_source:] if turn.role == "user"]
    return _Prepared(conversation.render(cleaned), user_texts, issues)


class VerificationProcessor(Processor):
    """Corrections, confirmations and definitions from users' words, extracted by an LLM."""

    name: ClassVar[str] = "verification"
    version: ClassVar[str] = "1.0.0"
    tables: ClassVar[Sequence[str]] = (store.EVIDENCE,)
    batchable: ClassVar[bool] = False  # one paid call per session: commit each as soon as it is paid for

    def __init__(
        self,
        *,
        http_client: httpx2.Client | None = None,
        sleep: Callable[[float], None] | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        """``http_client``, ``sleep`` and ``draw`` are for tests (a replaying transport, instant backoff).

        Without ``sleep``, waits (backoff, rate limits) end early when the run is cancelled.
        """
        self._http_client = http_client
        self._cancel = concurrency.Cancel()
        self._sleep = sleep or self._cancel.sleep
        self._opening = concurrency.Opening(self._cancel)
        self._draw = draw
        self._progress: dict[str, windows.Progress] = {}
        self._batch: batch.BatchMode | None = None
        self._client: llm.ExtractionClient | None = None
        self._settings = VerificationSettings()
        self._run_id = ""
        self.budget = RunBudget()

    def migrations(self) -> Sequence[Migration]:
        return (*store.MIGRATIONS, windows.MIGRATION, batch.MIGRATION)

    def report(self) -> Report:
        """``sessionpipe report verification``: the items with their evidence (:mod:`.report`)."""
        from sessionpipe_runner.processors.verification.report import VerificationReport

        return VerificationReport()

    def start(self, context: RunContext) -> None:
        """Validate the settings and build the client; a missing key fails the run with an explanation."""
        try:
            settings, api_key = VerificationSettings.resolve(context.config, context.environ)
        except VerificationConfigError as error:
            raise BadSettings(str(error)) from None
        gate = concurrency.RateGate(self._sleep)
        client = llm.make_client(
            api_key,
            base_url=settings.base_url,
            timeout=settings.timeout_seconds,
            http_client=self._http_client,
            event_hooks=concurrency.event_hooks(gate, self._cancel),
        )
        self._client = llm.ExtractionClient(
            client,
            model=settings.model,
            max_output_tokens=settings.max_output_tokens,
            policy=llm.RetryPolicy(max_retries=settings.max_retries),
            sleep=self._sleep,
            draw=self._draw,
        )
        self._opening = concurrency.Opening(self._cancel)
        self._prices = cost.prices(context)
        self._progress = windows.load(context.connection, self.version) if context.connection is not None else {}
        self._batch = batch.BatchMode(client, self.version, context.connection) if settings.mode == "batch" else None
        self._settings = settings
        self._run_id = context.run_id
        self.budget = RunBudget(max_tokens=settings.max_tokens_per_run, max_sessions=settings.max_sessions_per_run)

    def calls_in_flight(self) -> int:
        """The ``concurrency`` setting: sessions whose calls may be in flight at once."""
        return self._settings.concurrency

    def cancel(self) -> None:
        """No request is sent from now on; backoff and rate-limit waits end at once."""
        self._cancel.set()

    def process(self, session: SessionFile, data: bytes) -> Output:
        """Read the session's turns not yet extracted, window by window, and keep the quoted items."""
        if self._client is None:
            raise RuntimeError("start() was not called")
        settings = self._settings
        issues: Counter[str] = Counter()
        turns = conversation.extract_turns(data, issues)
        if settings.send == "user-only":
            turns = [turn for turn in turns if turn.role == "user"]
        plan = windows.plan(
            turns,
            self._progress.get(session.key),
            size=settings.max_turns,
            context=settings.context_turns,
            max_windows=settings.max_windows,
        )
        if plan.turns_left_out:
            issues["turns_left_out"] += plan.turns_left_out
        prepared = [
            prepare_turns(turns[window.first : window.end], window.source - window.first, settings.max_turn_chars)
            for window in plan.windows
        ]
        for one in prepared:
            issues.update(one.issues)
        to_send = [one for one in prepared if one.user_texts]
        output = VerificationOutput(issues=issues, incremental=plan.incremental, progress=plan.progress)
        if not to_send:
            if not plan.incremental:
                issues["no_user_text"] += 1
            return output  # no call needed; an incremental session keeps its earlier items
        stats = llm.CallStats()
        if self._batch is not None:
            accepted = self._collect(session, data, to_send, stats, issues)
        else:
            accepted = self._extract(to_send, stats, issues)
        output.counters = self._counters(stats, issues)
        output.items = len(accepted)
        output.extraction = store.SessionExtraction(
            session_file=session.key,
            user_name=session.user,
            project=session.project,
            session_id=session.session_id,
            model=settings.model,
            run_id=self._run_id,
            extracted_at=datetime.now(UTC),
            items=tuple(accepted),
        )
        return output

    def _extract(
        self, to_send: Sequence[_Prepared], stats: llm.CallStats, issues: Counter[str]
    ) -> list[store.AcceptedItem]:
        """One call per window; the accepted items, without those whose quote an earlier window had."""
        assert self._client is not None
        self.budget.start_session()
        reservations = concurrency.Reservations(self.budget)
        accepted: list[store.AcceptedItem] = []
        try:
            for one in to_send:
                with self._opening.turn():
                    extraction = self._client.extract(one.text, stats, before_call=reservations.reserve)
                self._merge(accepted, self._accept(extraction, one.user_texts, issues), issues)
        except llm.LLMUnavailable as error:
            raise FailRun(f"the LLM cannot be used with these settings: {error}") from error
        finally:
            reservations.settle(stats.total_tokens)
            issues.update(stats.problems)
        return accepted

    def _collect(
        self,
        session: SessionFile,
        data: bytes,
        to_send: Sequence[_Prepared],
        stats: llm.CallStats,
        issues: Counter[str],
    ) -> list[store.AcceptedItem]:
        """The windows' answers from the Message Batch (or :class:`Pending`); the accepted items."""
        assert self._client is not None and self._batch is not None
        params = [self._client.params([prompt.user_message(one.text)]) for one in to_send]
        answers = self._batch.collect(session.key, data, params)
        self.budget.start_session()
        accepted: list[store.AcceptedItem] = []
        for one, answer in zip(to_send, answers, strict=True):
            stats.calls += 1
            extraction = llm.read_answer(answer, stats)
            self._merge(accepted, self._accept(extraction, one.user_texts, issues), issues)
        self.budget.settle(0, stats.total_tokens)
        issues.update(stats.problems)
        return accepted

    @staticmethod
    def _merge(accepted: list[store.AcceptedItem], found: Sequence[store.AcceptedItem], issues: Counter[str]) -> None:
        """Add a window's items to ``accepted``, but not those whose quote an earlier window had."""
        earlier = {conversation.normalise_space(item.user_quote) for item in accepted}
        for item in found:
            if conversation.normalise_space(item.user_quote) in earlier:
                issues["quote_in_an_earlier_window"] += 1
            else:
                accepted.append(item)

    def finish(self, con: duckdb.DuckDBPyConnection) -> Counter[str]:
        """In batch mode, submit the requests gathered this run as one Message Batch (see :mod:`.batch`)."""
        return self._batch.finish(con) if self._batch is not None else Counter()

    def _counters(self, stats: llm.CallStats, issues: Counter[str]) -> Counter[str]:
        """What a session's calls did and cost, as run counters."""
        counters: Counter[str] = Counter(llm_calls=stats.calls, llm_tokens=stats.total_tokens)
        if stats.retries:
            counters["llm_retries"] += stats.retries
        for reason, count in stats.retried_because.items():
            counters[f"llm_retries_{reason}"] += count  # http_429, http_529, timeout, connection…
        if stats.repairs:
            counters["llm_repaired"] += stats.repairs
        if stats.invalid_items:
            issues["llm_item_invalid"] += stats.invalid_items
        spent = cost.microusd(self._prices, self._settings.model, stats, batch=self._batch is not None)
        if spent is None:
            issues["llm_model_unpriced"] += 1
        else:
            counters[cost.COUNTER] += spent
        return counters

    @staticmethod
    def _accept(extraction: Extraction, user_texts: Sequence[str], issues: Counter[str]) -> list[store.AcceptedItem]:
        """The items whose quote backs them (:mod:`.quotes`; the others are counted and dropped).

        Every returned field is untrusted: control characters are stripped and secrets the model
        echoed are redacted (:func:`.untrusted.clean_field`); the stored quote is the checked text.
        """
        accepted = []
        for item in extraction.items:
            check = quotes.check_quote(item.user_quote, user_texts)
            if check.problem is not None:
                issues[check.problem] += 1
                continue
            title = untrusted.clean_field(item.title, issues)
            content = untrusted.clean_field(item.content, issues)
            entities = (untrusted.clean_field(entity, issues) for entity in item.entities)
            if not title or not content:
                issues["item_empty_after_cleaning"] += 1
                continue
            accepted.append(
                store.AcceptedItem(
                    detection_type=item.detection_type,
                    title=title,
                    content=content,
                    user_quote=untrusted.clean_field(check.quote, issues),
                    domain=item.domain.value,
                    entities=tuple(dict.fromkeys(entity for entity in entities if entity)),
                    confidence=CONFIDENCE[item.detection_type],
                )
            )
        return accepted

    def write(self, con: duckdb.DuckDBPyConnection, batch_of: Sequence[tuple[SessionFile, Output]]) -> None:
        """Replace the sessions' evidence, merging items across sessions (see :mod:`.store`)."""
        extractions = []
        kept: set[str] = set()  # sessions read incrementally: their earlier evidence stays
        progress: list[tuple[str, windows.Progress]] = []
        for session, output in batch_of:
            if not isinstance(output, VerificationOutput):
                store.forget_sessions(con, [session.key])
                continue
            if output.incremental:
                kept.add(session.key)
            if output.extraction is not None:
                extractions.append(output.extraction)
            elif not output.incremental:
                # No call was needed (no user text): whatever the session said before is gone.
                store.forget_sessions(con, [session.key])
            if output.progress is not None:
                progress.append((session.key, output.progress))
        if extractions:
            store.replace_sessions(con, extractions, keep_existing=kept)
        windows.save(con, self.version, progress, datetime.now(UTC))
        batch.forget(con, [session.key for session, _ in batch_of])  # their results are stored

    def forget(self, con: duckdb.DuckDBPyConnection, session_keys: Sequence[str]) -> None:
        store.forget_sessions(con, session_keys)
        windows.forget(con, session_keys)
        batch.forget(con, session_keys)
