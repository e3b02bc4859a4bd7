"""Realistic Claude Code transcripts, generated: demo data for ``sessionpipe demo`` / ``quickstart`` and benchmarks.

Not part of the runner: nothing in :mod:`sessionpipe_runner` imports this package except the
``demo`` and ``quickstart`` commands, when they run.

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

from sessionpipe_demo.corpus import CorpusStats, generate_corpus, iter_session_files

__all__ = ["CorpusStats", "generate_corpus", "iter_session_files"]
