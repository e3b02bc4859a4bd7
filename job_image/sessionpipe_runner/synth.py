"""Realistic Claude Code transcripts, generated: demo data for ``sessionpipe demo`` / ``quickstart`` and benchmarks.

The output is a sessions volume, ``<out>/<user>/<project>/<session>.jsonl``, with the shapes that
docs/transcripts.md describes and that the ``usage`` processor and ccusage must agree on:

- user and assistant lines with the full envelope (``parentUuid``, ``isSidechain``, ``cwd``,
  ``sessionId``, ``version``, ``gitBranch``, ``uuid``, ``timestamp``), compact JSON as Claude Code
  writes it;
- one API call written as several assistant lines (thinking, text, tool_use blocks) sharing
  ``message.id`` and ``requestId``; from 2.0 on the earlier lines are streaming snapshots whose
  ``output_tokens`` grows to the final count, before 2.0 every line repeats the same usage;
- ``message.usage`` with input, output, cache reads and cache writes (the 5-minute/1-hour split from
  1.0.80 on, only the total before), ``server_tool_use.web_search_requests``, ``service_tier`` and,
  from 2.1 on, ``speed`` (``fast`` on some Opus 4.6 calls); several models over the months;
- tool results (user lines with ``toolUseResult``), a ``Task`` tool result carrying the subagent's own
  ``usage`` (which must not be counted), summaries, meta lines, ``system`` lines (turn durations,
  compaction boundaries, API errors), ``file-history-snapshot`` lines, ``<synthetic>`` zero-usage
  replies;
- subagents: flat ``<project>/agent-<id>.jsonl`` files before 2.1, then
  ``<project>/<session>/subagents/agent-<id>.jsonl`` (and ``agent-acompact-<id>.jsonl`` for
  compaction calls), with ``isSidechain: true``, ``agentId`` and the parent's ``sessionId``;
- the same calls in several files: resumed sessions that start with a copy of an earlier session's
  lines, and snapshots of a session copied into another user's folder.

Everything comes from one :class:`random.Random` seeded by the caller, and each file's mtime is set to
its last line's timestamp, so a seed always gives the same bytes and the same tree.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

#: The corpus covers these months (fixed, so a seed gives the same corpus whatever today is).
FIRST_DAY = datetime(2025, 6, 2, tzinfo=UTC)
LAST_DAY = datetime(2026, 3, 27, tzinfo=UTC)

USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj")
REPOSITORIES = (
    "payments-api",
    "web-dashboard",
    "infra",
    "ml-pipeline",
    "mobile-app",
    "docs-site",
    "billing-worker",
    "search-service",
    "data-warehouse",
    "cli-tools",
)
BRANCHES = ("main", "main", "main", "feature/retry-budget", "fix/null-deref", "chore/deps", "")

#: (first day the model is used, model id, relative weight once available).
MODELS: tuple[tuple[datetime, str, int], ...] = (
    (datetime(2025, 6, 1, tzinfo=UTC), "claude-sonnet-4-20250514", 6),
    (datetime(2025, 6, 1, tzinfo=UTC), "claude-opus-4-20250514", 1),
    (datetime(2025, 8, 6, tzinfo=UTC), "claude-opus-4-1-20250805", 2),
    (datetime(2025, 9, 30, tzinfo=UTC), "claude-sonnet-4-5-20250929", 8),
    (datetime(2025, 10, 16, tzinfo=UTC), "claude-haiku-4-5-20251001", 2),
    (datetime(2025, 11, 25, tzinfo=UTC), "claude-opus-4-5-20251101", 5),
    (datetime(2026, 2, 6, tzinfo=UTC), "claude-opus-4-6", 6),
)
RETIRED = {
    "claude-sonnet-4-20250514": datetime(2025, 11, 1, tzinfo=UTC),
    "claude-opus-4-20250514": datetime(2025, 9, 1, tzinfo=UTC),
}
FAST_MODELS = frozenset({"claude-opus-4-6"})
SUBAGENT_MODEL = "claude-haiku-4-5-20251001"  # what Explore subagents ran on once it existed
SUBAGENT_MODEL_SINCE = datetime(2025, 10, 16, tzinfo=UTC)
SYNTHETIC_MODEL = "<synthetic>"

#: Claude Code versions by the day they were current: (first day, major.minor.patch range).
VERSIONS: tuple[tuple[datetime, str, int, int], ...] = (
    (datetime(2025, 6, 1, tzinfo=UTC), "1.0.", 17, 79),
    (datetime(2025, 8, 10, tzinfo=UTC), "1.0.", 80, 128),
    (datetime(2025, 10, 1, tzinfo=UTC), "2.0.", 1, 76),
    (datetime(2026, 1, 8, tzinfo=UTC), "2.1.", 1, 40),
)

VOCABULARY = (
    "the function returns a list of rows from the cache when the key is present otherwise it reads "
    "the file parses each line and writes the result into the table we need to handle the error "
    "path retry with backoff and log the request id so that the failure can be traced later test "
    "coverage is missing for the empty input case let me check the config loader and the schema "
    "migration before changing the handler this keeps the public interface stable while fixing the "
    "race between the scanner and the writer"
)
WORDS = tuple(VOCABULARY.split())
IDENTIFIERS = (
    "session",
    "records",
    "cache_key",
    "payload",
    "retry_budget",
    "handler",
    "store",
    "config",
    "result",
    "buffer",
    "request",
    "offset",
    "timeout",
    "client",
    "rows",
)
TOOLS = ("Read", "Bash", "Edit", "Grep", "Glob", "Write", "TodoWrite", "WebSearch", "WebFetch")
PROMPTS = (
    "fix the failing test in the payments module",
    "add retries with exponential backoff to the http client",
    "why is the dashboard slow when the table has many rows?",
    "refactor the config loader so it reads env vars first",
    "write a migration that adds an index on user_id",
    "review this diff and tell me what could break",
    "the CI job fails on the lint step, can you look?",
    "summarise what changed in the last three commits",
    "add a CLI flag for the output format and document it",
    "investigate the memory leak in the worker process",
)


@dataclass
class CorpusStats:
    """What :func:`generate_corpus` wrote."""

    users: int = 0
    projects: int = 0
    sessions: int = 0  # main session files (resumed and copied ones included)
    subagent_files: int = 0
    files: int = 0
    bytes: int = 0
    lines: int = 0
    assistant_lines: int = 0
    api_calls: int = 0  # distinct (message id, request id) pairs with real usage
    resumed_sessions: int = 0
    copied_sessions: int = 0
    models: set[str] = field(default_factory=set)
    first_timestamp: str = ""
    last_timestamp: str = ""

    def __str__(self) -> str:
        return (
            f"{self.bytes / 1024 / 1024:.1f} MB in {self.files} files: {self.users} users, {self.projects} projects, "
            f"{self.sessions} sessions, {self.subagent_files} subagent files, {self.lines:,} lines, "
            f"{self.api_calls:,} API calls, {self.first_timestamp[:10]} to {self.last_timestamp[:10]}"
        )


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _size(lines: list[bytes]) -> int:
    return sum(map(len, lines))


def _dumps(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record) + b"\n"


class _Generator:
    """The state of one corpus being written; :func:`generate_corpus` is the way to use it."""

    def __init__(self, out: Path, users: int, target_bytes: int, seed: int) -> None:
        self.out = out
        self.rng = random.Random(seed)
        self.target = target_bytes
        self.stats = CorpusStats()
        self.users = [USERS[i] if i < len(USERS) else f"user{i:03d}" for i in range(users)]
        self.projects: dict[str, list[str]] = {}
        for user in self.users:
            count = self.rng.randint(2, 4)
            self.projects[user] = self.rng.sample(REPOSITORIES, count)
        self.sources = [self._source_file() for _ in range(40)]
        #: Per (user, repository): the lines and end time of the last session, for resumes.
        self.last_session: dict[tuple[str, str], tuple[list[bytes], datetime]] = {}
        self.seen_projects: set[tuple[str, str]] = set()

    # --- identifiers and text --------------------------------------------------------------
    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def token(self, prefix: str, length: int = 24) -> str:
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789"
        return prefix + "".join(self.rng.choices(alphabet, k=length))

    def prose(self, words: int) -> str:
        return " ".join(self.rng.choices(WORDS, k=words)).capitalize() + "."

    def _source_file(self) -> list[str]:
        rng = self.rng
        lines = ['"""' + " ".join(rng.choices(WORDS, k=12)) + '."""', "", "from __future__ import annotations", ""]
        for _ in range(rng.randint(8, 30)):
            name = rng.choice(IDENTIFIERS)
            args = ", ".join(rng.sample(IDENTIFIERS, rng.randint(1, 3)))
            lines.append(f"def {name}_{rng.randint(1, 99)}({args}):")
            lines.append(f'    """{" ".join(rng.choices(WORDS, k=rng.randint(5, 14)))}."""')
            for _ in range(rng.randint(2, 9)):
                a, b = rng.sample(IDENTIFIERS, 2)
                lines.append(f"    {a} = {b}.get({rng.randint(0, 500)}) or {a}")
            lines.append(f"    return {rng.choice(IDENTIFIERS)}")
            lines.append("")
        return lines

    def file_excerpt(self) -> tuple[str, str]:
        """(path, cat -n style excerpt) as the Read tool returns it."""
        index = self.rng.randrange(len(self.sources))
        source = self.sources[index]
        start = self.rng.randrange(len(source))
        stop = min(len(source), start + self.rng.randint(20, 220))
        text = "\n".join(f"{n:>6}\u2192{line}" for n, line in enumerate(source[start:stop], start=start + 1))
        return f"src/{IDENTIFIERS[index % len(IDENTIFIERS)]}_{index}.py", text

    # --- calendar ----------------------------------------------------------------------------
    def version(self, when: datetime) -> str:
        chosen = VERSIONS[0]
        for entry in VERSIONS:
            if when >= entry[0]:
                chosen = entry
        _, prefix, low, high = chosen
        # later in an era, later patch releases
        era_end = next((v[0] for v in VERSIONS if v[0] > chosen[0]), LAST_DAY)
        progress = (when - chosen[0]) / (era_end - chosen[0])
        patch = low + int((high - low) * min(1.0, max(0.0, progress)))
        return f"{prefix}{patch}"

    def model(self, when: datetime) -> str:
        available = [(m, w) for day, m, w in MODELS if when >= day and when < RETIRED.get(m, LAST_DAY + timedelta(1))]
        # the newest models take over: weight grows with how recent the model is
        names = [m for m, _ in available]
        weights = [w * (1 + 2 * i) for i, (_, w) in enumerate(available)]
        return self.rng.choices(names, weights=weights)[0]

    # --- the corpus ------------------------------------------------------------------------
    def run(self) -> CorpusStats:
        self.out.mkdir(parents=True, exist_ok=True)
        self.stats.users = len(self.users)
        # sessions in time order, so resumes copy sessions that really happened before
        span = (LAST_DAY - FIRST_DAY).total_seconds()
        while self.stats.bytes < self.target:
            user = self.rng.choice(self.users)
            repository = self.rng.choice(self.projects[user])
            start = FIRST_DAY + timedelta(seconds=self.rng.random() * span)
            self.session(user, repository, start)
        self.stats.projects = len(self.seen_projects)
        return self.stats

    def write(self, relative: Path, lines: list[bytes], last: datetime) -> None:
        path = self.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(lines)
        path.write_bytes(data)
        stamp = last.timestamp()
        os.utime(path, (stamp, stamp))
        self.stats.files += 1
        self.stats.bytes += len(data)
        self.stats.lines += len(lines)

    def note_time(self, moment: datetime) -> None:
        text = _iso(moment)
        if not self.stats.first_timestamp or text < self.stats.first_timestamp:
            self.stats.first_timestamp = text
        if text > self.stats.last_timestamp:
            self.stats.last_timestamp = text

    def session(self, user: str, repository: str, start: datetime) -> None:
        rng = self.rng
        cwd = f"/home/{user}/src/{repository}"
        slug = "".join(c if c.isalnum() else "-" for c in cwd)
        self.seen_projects.add((user, slug))
        session_id = self.uuid()
        version = self.version(start)
        writer = _SessionWriter(self, user, cwd, session_id, version, rng.choice(BRANCHES), start)
        lines: list[bytes] = []
        previous = self.last_session.get((user, repository))
        budget = self.target - self.stats.bytes
        if previous is not None and rng.random() < 0.2 and previous[1] < start and _size(previous[0]) < budget // 2:
            # a resumed session: Claude Code copies the conversation so far into the new file
            copied, _ = previous
            lines.extend(copied)
            self.stats.resumed_sessions += 1
        writer.preamble(lines)
        turns = min(40, 1 + int(rng.expovariate(1 / 5)))  # most sessions are short, a few are long
        for _ in range(turns):
            writer.turn(lines)
            if _size(lines) >= budget:
                break
        if rng.random() < 0.3:
            lines.insert(0, _dumps({"type": "summary", "summary": self.prose(6)[:60], "leafUuid": writer.parent}))
        end = writer.now
        self.write(Path(user) / slug / f"{session_id}.jsonl", lines, end)
        self.stats.sessions += 1
        for relative, agent_lines, agent_end in writer.subagents:
            self.write(Path(user) / slug / relative, agent_lines, agent_end)
            self.stats.subagent_files += 1
        self.last_session[(user, repository)] = (lines, end)
        if len(self.users) > 1 and rng.random() < 0.05:
            # a snapshot of this session taken while it grew, found in another user's folder
            other = rng.choice([u for u in self.users if u != user])
            prefix = lines[: rng.randint(1, len(lines))]
            if _size(prefix) > self.target - self.stats.bytes:
                return
            self.write(Path(other) / slug / f"{session_id}.jsonl", prefix, end)
            self.seen_projects.add((other, slug))
            self.stats.sessions += 1
            self.stats.copied_sessions += 1


class _SessionWriter:
    """Appends the lines of one session (and its subagents) as Claude Code would write them."""

    def __init__(
        self,
        gen: _Generator,
        user: str,
        cwd: str,
        session_id: str,
        version: str,
        branch: str,
        start: datetime,
        *,
        agent_id: str | None = None,
    ) -> None:
        self.gen = gen
        self.rng = gen.rng
        self.user = user
        self.cwd = cwd
        self.session_id = session_id
        self.version = version
        self.branch = branch
        self.now = start
        self.parent: str | None = None
        self.agent_id = agent_id
        self.context = self.rng.randint(9000, 18000)  # system prompt and CLAUDE.md, cached
        self.subagents: list[tuple[Path, list[bytes], datetime]] = []
        self.streaming = not version.startswith("1.")
        self.nested_subagents = version.startswith(("2.1", "2.2"))
        major_minor_patch = tuple(int(p) for p in version.split("."))
        self.split_cache = major_minor_patch >= (1, 0, 80)

    def tick(self, low: float, high: float) -> str:
        self.now += timedelta(seconds=self.rng.uniform(low, high))
        self.gen.note_time(self.now)
        return _iso(self.now)

    def envelope(self, kind: str) -> dict[str, Any]:
        record: dict[str, Any] = {
            "parentUuid": self.parent,
            "isSidechain": self.agent_id is not None,
            "userType": "external",
            "cwd": self.cwd,
            "sessionId": self.session_id,
            "version": self.version,
            "gitBranch": self.branch,
        }
        if self.agent_id is not None:
            record["agentId"] = self.agent_id
        record["type"] = kind
        return record

    def emit(self, lines: list[bytes], record: dict[str, Any], low: float = 0.05, high: float = 2.0) -> None:
        record["uuid"] = self.gen.uuid()
        record["timestamp"] = self.tick(low, high)
        self.parent = record["uuid"]
        lines.append(_dumps(record))

    # --- line kinds ------------------------------------------------------------------------
    def preamble(self, lines: list[bytes]) -> None:
        if self.agent_id is None and self.streaming:
            lines.append(
                _dumps(
                    {
                        "type": "file-history-snapshot",
                        "messageId": self.gen.uuid(),
                        "snapshot": {
                            "messageId": self.gen.uuid(),
                            "trackedFileBackups": {},
                            "timestamp": _iso(self.now),
                        },
                        "isSnapshotUpdate": False,
                    }
                )
            )
        if self.agent_id is None and self.rng.random() < 0.3:
            meta = self.envelope("user")
            meta["message"] = {
                "role": "user",
                "content": "<command-name>/clear</command-name>\n<command-message>clear</command-message>",
            }
            meta["isMeta"] = True
            self.emit(lines, meta)

    def user_prompt(self, lines: list[bytes], text: str) -> None:
        record = self.envelope("user")
        record["message"] = {"role": "user", "content": text}
        self.emit(lines, record, 5, 400)

    def turn(self, lines: list[bytes]) -> None:
        """A user prompt and the calls that answer it, with their tool results."""
        rng = self.rng
        self.user_prompt(
            lines, rng.choice(PROMPTS) + (" " + self.gen.prose(rng.randint(0, 40)) if rng.random() < 0.5 else "")
        )
        if rng.random() < 0.03:
            self.synthetic(lines, "No response requested.")
            return
        for _ in range(rng.choices((1, 2, 3, 4, 6, 8), weights=(5, 4, 3, 2, 1, 1))[0]):
            tools = self.call(lines)
            if not tools:
                break
            for tool_id, tool in tools:
                self.tool_result(lines, tool_id, tool)
        if self.agent_id is None and rng.random() < 0.5:
            system = self.envelope("system")
            system.update({"subtype": "turn_duration", "durationMs": rng.randint(2000, 400000), "isMeta": False})
            self.emit(lines, system)
        if self.agent_id is None and self.context > 150000:
            self.compact(lines)

    def call_inputs(self, model: str, web_searches: int) -> dict[str, Any]:
        """The input side of one call's usage (the same on every line of the call); grows the context."""
        rng = self.rng
        fresh = rng.randint(200, 9000)
        one_hour = self.split_cache and rng.random() < 0.2
        inputs: dict[str, Any] = {
            "input_tokens": rng.randint(1, 12),
            "cache_creation_input_tokens": fresh,
            "cache_read_input_tokens": self.context,
        }
        if self.split_cache:
            inputs["cache_creation"] = {
                "ephemeral_5m_input_tokens": 0 if one_hour else fresh,
                "ephemeral_1h_input_tokens": fresh if one_hour else 0,
            }
        inputs["output_tokens"] = 0  # placeholder keeping Claude Code's key order
        if web_searches:
            inputs["server_tool_use"] = {"web_search_requests": web_searches, "web_fetch_requests": 0}
        inputs["service_tier"] = "standard"
        if self.nested_subagents:
            inputs["speed"] = "fast" if model in FAST_MODELS and rng.random() < 0.3 else "standard"
        self.context += fresh
        return inputs

    def call(self, lines: list[bytes]) -> list[tuple[str, str]]:
        """One API call as Claude Code writes it: one line per content block; returns the tools it called.

        From 2.0 on, the lines before the last are streaming snapshots with a partial
        ``output_tokens``; before 2.0 every line carries the final usage.
        """
        rng = self.rng
        gen = self.gen
        subagent_model = self.agent_id is not None and self.now >= SUBAGENT_MODEL_SINCE and rng.random() < 0.7
        model = SUBAGENT_MODEL if subagent_model else gen.model(self.now)
        blocks: list[dict[str, Any]] = []
        if rng.random() < 0.4:
            blocks.append(
                {"type": "thinking", "thinking": gen.prose(rng.randint(20, 160)), "signature": gen.token("Ep", 88)}
            )
        blocks.append({"type": "text", "text": gen.prose(rng.randint(5, 80))})
        tools: list[tuple[str, str]] = []
        searches = 0
        if rng.random() < 0.75:
            for _ in range(rng.choices((1, 2, 3), weights=(6, 2, 1))[0]):
                tool = rng.choice(TOOLS)
                if tool == "Read" and self.agent_id is None and rng.random() < 0.35:
                    tool = "Task"
                if tool == "WebSearch":
                    searches += 1
                tool_id = gen.token("toolu_01")
                blocks.append({"type": "tool_use", "id": tool_id, "name": tool, "input": self.tool_input(tool)})
                tools.append((tool_id, tool))
        final_output = rng.randint(20, 2400)
        message_id = gen.token("msg_01")
        request_id = gen.token("req_011C")
        gen.stats.api_calls += 1
        gen.stats.models.add(model)
        inputs = self.call_inputs(model, searches)
        for index, block in enumerate(blocks):
            streaming_snapshot = self.streaming and index < len(blocks) - 1
            usage = dict(inputs)
            usage["output_tokens"] = (
                max(1, final_output * (index + 1) // (len(blocks) + 1)) if streaming_snapshot else final_output
            )
            record = self.envelope("assistant")
            del record["type"]  # Claude Code writes it after requestId
            record["message"] = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [block],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage,
            }
            record["requestId"] = request_id
            record["type"] = "assistant"
            self.emit(lines, record, 0.3, 25 if index == 0 else 4)
            gen.stats.assistant_lines += 1
        return tools

    def tool_input(self, tool: str) -> dict[str, Any]:
        rng = self.rng
        path = f"{self.cwd}/src/{rng.choice(IDENTIFIERS)}.py"
        if tool == "Bash":
            command = rng.choice(("pytest -q", "git status", "ruff check .", "make build", "git diff HEAD~1", "ls -la"))
            return {"command": command, "description": self.gen.prose(5)}
        if tool in ("Read", "Write"):
            return {"file_path": path} if tool == "Read" else {"file_path": path, "content": self.gen.prose(60)}
        if tool == "Edit":
            return {"file_path": path, "old_string": self.gen.prose(8), "new_string": self.gen.prose(10)}
        if tool in ("Grep", "Glob"):
            return {"pattern": rng.choice(IDENTIFIERS), "path": self.cwd}
        if tool == "TodoWrite":
            return {"todos": [{"content": self.gen.prose(6), "status": "pending", "activeForm": self.gen.prose(4)}]}
        if tool == "Task":
            return {"description": "Explore the codebase", "prompt": self.gen.prose(40), "subagent_type": "Explore"}
        if tool == "WebSearch":
            return {"query": " ".join(rng.choices(WORDS, k=5))}
        return {"url": f"https://docs.example.com/{rng.choice(IDENTIFIERS)}", "prompt": self.gen.prose(8)}

    def tool_result(self, lines: list[bytes], tool_id: str, tool: str) -> None:
        rng = self.rng
        record = self.envelope("user")
        is_error = rng.random() < 0.05
        extra: dict[str, Any]
        if tool == "Task":
            content, extra = self.subagent(rng)
        elif tool == "Read":
            path, content = self.gen.file_excerpt()
            extra = {
                "type": "text",
                "file": {"filePath": path, "content": content[:2000], "numLines": content.count("\n") + 1},
            }
        elif tool == "Bash":
            _, content = self.gen.file_excerpt()
            content = content[: rng.randint(0, len(content))]
            extra = {"stdout": content, "stderr": "", "interrupted": False, "isImage": False}
        else:
            content = self.gen.prose(rng.randint(5, 120))
            extra = {"result": content[:200]}
        if is_error:
            content = "Error: " + self.gen.prose(10)
            extra = {"error": content}
        record["message"] = {
            "role": "user",
            "content": [{"tool_use_id": tool_id, "type": "tool_result", "content": content, "is_error": is_error}],
        }
        record["toolUseResult"] = extra
        self.context += len(content) // 4
        self.emit(lines, record, 0.2, 40)

    def child(self, agent_id: str) -> _SessionWriter:
        """A writer for a subagent of this session (same user, folder, session and clock)."""
        return _SessionWriter(
            self.gen, self.user, self.cwd, self.session_id, self.version, self.branch, self.now, agent_id=agent_id
        )

    def subagent(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        """Write a subagent transcript; returns the parent's tool result text and ``toolUseResult``."""
        agent_id = self.gen.token("", 8).lower()
        agent = self.child(agent_id)
        agent_lines: list[bytes] = []
        agent.user_prompt(agent_lines, self.gen.prose(30))
        calls_before = self.gen.stats.api_calls
        for _ in range(rng.randint(1, 4)):
            tools = agent.call(agent_lines)
            for tool_id, tool in tools:
                agent.tool_result(agent_lines, tool_id, tool)
        answer = self.gen.prose(rng.randint(20, 120))
        self.now = agent.now
        if self.nested_subagents:
            relative = Path(self.session_id) / "subagents" / f"agent-{agent_id}.jsonl"
        else:
            relative = Path(f"agent-{agent_id}.jsonl")
        self.subagents.append((relative, agent_lines, agent.now))
        # the subagent's own usage, repeated on the parent's tool result: must not be counted again
        usage = {
            "input_tokens": rng.randint(10, 400),
            "cache_creation_input_tokens": rng.randint(1000, 20000),
            "cache_read_input_tokens": rng.randint(10000, 90000),
            "output_tokens": rng.randint(100, 3000),
            "service_tier": "standard",
        }
        extra = {
            "status": "completed",
            "prompt": self.gen.prose(10),
            "agentId": agent_id,
            "content": [{"type": "text", "text": answer}],
            "totalDurationMs": rng.randint(5000, 300000),
            "totalTokens": sum(v for v in usage.values() if isinstance(v, int)),
            "totalToolUseCount": self.gen.stats.api_calls - calls_before,
            "usage": usage,
        }
        return answer, extra

    def synthetic(self, lines: list[bytes], text: str) -> None:
        record = self.envelope("assistant")
        record["message"] = {
            "id": self.gen.uuid(),
            "model": SYNTHETIC_MODEL,
            "role": "assistant",
            "stop_reason": "stop_sequence",
            "stop_sequence": "",
            "type": "message",
            "usage": {
                "input_tokens": 0,
                "output_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
                "service_tier": None,
            },
            "content": [{"type": "text", "text": text}],
        }
        record["isApiErrorMessage"] = False
        record["type"] = record.pop("type")  # after the message, where Claude Code puts it
        self.emit(lines, record)
        self.gen.stats.assistant_lines += 1

    def compact(self, lines: list[bytes]) -> None:
        """Context full: a compaction boundary, the summary as a meta user line, and a fresh context."""
        rng = self.rng
        record = self.envelope("system")
        record.update(
            {
                "subtype": "compact_boundary",
                "content": "Conversation compacted",
                "isMeta": False,
                "level": "info",
                "compactMetadata": {"trigger": "auto", "preTokens": self.context},
            }
        )
        self.emit(lines, record)
        if self.nested_subagents:
            # the compaction call itself is real usage, written as its own subagent file
            agent = self.child("acompact-" + self.gen.token("", 6).lower())
            agent.context = self.context
            agent_lines: list[bytes] = []
            agent.user_prompt(agent_lines, "Your task is to create a detailed summary of the conversation so far.")
            agent.call(agent_lines)
            self.subagents.append(
                (Path(self.session_id) / "subagents" / f"agent-{agent.agent_id}.jsonl", agent_lines, agent.now)
            )
            self.now = agent.now
        summary = self.envelope("user")
        summary["message"] = {"role": "user", "content": "This session is being continued. " + self.gen.prose(80)}
        summary["isCompactSummary"] = True
        summary["isVisibleInTranscriptOnly"] = True
        self.emit(lines, summary)
        self.context = rng.randint(12000, 30000)
        if rng.random() < 0.3:
            error = self.envelope("system")
            error.update(
                {"subtype": "api_error", "level": "error", "retryInMs": 1000, "retryAttempt": 1, "maxRetries": 10}
            )
            self.emit(lines, error)


def generate_corpus(out: Path, users: int, target_bytes: int, seed: int) -> CorpusStats:
    """Write about ``target_bytes`` of transcripts for ``users`` users under ``out``; same seed, same files.

    The corpus stops at the first turn that reaches ``target_bytes`` (a turn or a subagent file more
    at most). Existing files of the same names are overwritten; nothing else under ``out`` is touched.
    """
    if users < 1:
        raise ValueError("users must be 1 or more")
    if target_bytes < 1:
        raise ValueError("target_bytes must be 1 or more")
    return _Generator(out, users, target_bytes, seed).run()


def iter_session_files(root: Path) -> Iterator[Path]:
    """Every ``.jsonl`` file under ``root``, in a stable order."""
    yield from sorted(root.rglob("*.jsonl"))
