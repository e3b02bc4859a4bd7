"""One demo session as Claude Code writes it: envelopes, API calls, tool results, subagents, compaction."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sessionpipe_demo.world import (
    FAST_MODELS,
    IDENTIFIERS,
    PROMPTS,
    SUBAGENT_MODEL,
    SUBAGENT_MODEL_SINCE,
    SYNTHETIC_MODEL,
    TOOLS,
    WORDS,
    dumps,
    iso,
)

if TYPE_CHECKING:
    from sessionpipe_demo.corpus import Generator


class SessionWriter:
    """Appends the lines of one session (and its subagents) as Claude Code would write them."""

    def __init__(
        self,
        gen: Generator,
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
        return iso(self.now)

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
        lines.append(dumps(record))

    # --- line kinds ------------------------------------------------------------------------
    def preamble(self, lines: list[bytes]) -> None:
        if self.agent_id is None and self.streaming:
            lines.append(
                dumps(
                    {
                        "type": "file-history-snapshot",
                        "messageId": self.gen.uuid(),
                        "snapshot": {
                            "messageId": self.gen.uuid(),
                            "trackedFileBackups": {},
                            "timestamp": iso(self.now),
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

    def child(self, agent_id: str) -> SessionWriter:
        """A writer for a subagent of this session (same user, folder, session and clock)."""
        return SessionWriter(
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
