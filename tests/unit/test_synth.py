"""The demo transcript generator: deterministic, the size asked for, and the shapes of real transcripts.

The test that matters most, that ``sessionpipe report usage`` and ccusage agree on a generated corpus,
is in ``tests/parity/test_synth_parity.py`` (it needs ccusage from npm).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from sessionpipe_demo import CorpusStats, generate_corpus


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """Each file's relative path -> (content hash, mtime in ns)."""
    return {
        str(path.relative_to(root)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def records(root: Path) -> dict[Path, list[dict[str, Any]]]:
    """Every file's lines, decoded; fails on a line that is not a newline-terminated JSON object."""
    decoded: dict[Path, list[dict[str, Any]]] = {}
    for path in sorted(root.rglob("*.jsonl")):
        data = path.read_bytes()
        assert data.endswith(b"\n"), f"{path}: last line not terminated"
        lines = []
        for number, raw in enumerate(data.split(b"\n")[:-1], start=1):
            value = json.loads(raw)
            assert isinstance(value, dict), f"{path}:{number} is not an object"
            lines.append(value)
        decoded[path] = lines
    return decoded


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CorpusStats]:
    root = tmp_path_factory.mktemp("synth") / "sessions"
    return root, generate_corpus(root, users=4, target_bytes=6_000_000, seed=11)


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    first = generate_corpus(tmp_path / "a", users=2, target_bytes=400_000, seed=3)
    second = generate_corpus(tmp_path / "b", users=2, target_bytes=400_000, seed=3)
    third = generate_corpus(tmp_path / "c", users=2, target_bytes=400_000, seed=4)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert str(first) == str(second)
    assert tree_digest(tmp_path / "c").keys().isdisjoint(tree_digest(tmp_path / "a").keys())
    assert str(first) != str(third)


@pytest.mark.parametrize(("target", "seed"), [(1_000_000, 1), (3_000_000, 2), (3_000_000, 5)])
def test_size_is_near_the_target_and_the_stats_are_true(tmp_path: Path, target: int, seed: int) -> None:
    stats = generate_corpus(tmp_path, users=3, target_bytes=target, seed=seed)
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    on_disk = sum(path.stat().st_size for path in files)
    assert target <= on_disk <= target * 1.1
    assert stats.bytes == on_disk
    assert stats.files == len(files)
    assert stats.lines == sum(path.read_bytes().count(b"\n") for path in files)
    assert {path.relative_to(tmp_path).parts[0] for path in files} == {"alice", "bob", "carol"}
    assert f"{stats.files} files" in str(stats) and "3 users" in str(stats)


def test_every_line_is_json_with_claude_code_shapes(corpus: tuple[Path, CorpusStats]) -> None:
    root, stats = corpus
    decoded = records(root)
    types: Counter[str] = Counter()
    calls: dict[tuple[Path, str, str], list[tuple[str, dict[str, Any], bool]]] = defaultdict(list)
    call_files: dict[tuple[str, str], set[Path]] = defaultdict(set)
    blocks: Counter[str] = Counter()
    models: set[str] = set()
    months: set[str] = set()
    seen: Counter[str] = Counter()
    for path, lines in decoded.items():
        relative = path.relative_to(root).parts
        assert len(relative) in (3, 5), relative  # <user>/<project>/<file> or …/<session>/subagents/<file>
        for line in lines:
            kind = line["type"]
            types[kind] += 1
            if kind == "system":
                seen[f"system:{line['subtype']}"] += 1
            if kind not in ("user", "assistant"):
                continue
            months.add(line["timestamp"][:7])
            assert line["timestamp"].endswith("Z") and line["cwd"].startswith("/home/")
            message = line["message"]
            content = message["content"]
            for block in content if isinstance(content, list) else []:
                blocks[block["type"]] += 1
            if line.get("isMeta"):
                seen["meta"] += 1
            if kind == "user" and isinstance(line.get("toolUseResult"), dict) and "usage" in line["toolUseResult"]:
                seen["task_result_with_usage"] += 1
            if kind == "assistant":
                usage = message["usage"]
                models.add(message["model"])
                if message["model"] == "<synthetic>":
                    assert "requestId" not in line and not any(usage[k] for k in ("input_tokens", "output_tokens"))
                    continue
                key = (message["id"], line["requestId"])
                calls[(path, *key)].append((line["version"], usage, line["isSidechain"]))
                call_files[key].add(path)
                if "cache_creation" in usage:
                    split = usage["cache_creation"]
                    assert (
                        split["ephemeral_5m_input_tokens"] + split["ephemeral_1h_input_tokens"]
                        == (usage["cache_creation_input_tokens"])
                    )
                    seen["1h_cache_write"] += split["ephemeral_1h_input_tokens"] > 0
                else:
                    seen["no_cache_split"] += 1
                seen["web_search"] += usage.get("server_tool_use", {}).get("web_search_requests", 0) > 0
                seen["fast"] += usage.get("speed") == "fast"
            if line["isSidechain"]:
                assert line["agentId"] and path.name == f"agent-{line['agentId']}.jsonl"
                # subagent lines carry the parent's session id: the folder name, or a main file beside them
                parent = path.parent.parent.name if relative[-2] == "subagents" else None
                assert parent is None or line["sessionId"] == parent
                seen["nested_subagent" if parent else "flat_subagent"] += 1
    assert {"user", "assistant", "system", "summary", "file-history-snapshot"} <= set(types)
    assert {"text", "thinking", "tool_use", "tool_result"} <= set(blocks)
    for shape in (
        "system:turn_duration",
        "system:compact_boundary",
        "meta",
        "task_result_with_usage",
        "1h_cache_write",
        "no_cache_split",
        "web_search",
        "fast",
        "nested_subagent",
        "flat_subagent",
    ):
        assert seen[shape], f"no {shape} in the corpus"
    assert "<synthetic>" in models and len(models - {"<synthetic>"}) >= 5
    assert len(months) >= 8
    assert stats.api_calls == len(call_files)
    # one call, several lines: streaming snapshots (2.x) grow to the final output; 1.x lines repeat it
    multi = [lines for lines in calls.values() if len(lines) > 1]
    assert multi
    for call_lines in multi:
        outputs = [usage["output_tokens"] for _, usage, _ in call_lines]
        inputs = {json.dumps({k: v for k, v in u.items() if k != "output_tokens"}) for _, u, _ in call_lines}
        assert len(inputs) == 1, "the lines of one call differ in more than output_tokens"
        if call_lines[0][0].startswith("1."):
            assert len(set(outputs)) == 1
        else:
            assert outputs == sorted(outputs)
    assert any(len(set(usage["output_tokens"] for _, usage, _ in lines)) > 1 for lines in multi)
    # the same call in several files: resumed sessions and copies in another user's folder
    shared = [files for files in call_files.values() if len(files) > 1]
    assert shared and stats.resumed_sessions and stats.copied_sessions
    assert any(len({f.relative_to(root).parts[0] for f in files}) > 1 for files in shared)
