"""Throughput of the ``usage`` processor beside ccusage 20.0.24, on the same files, in the same session.

``python bench/bench_usage.py [--megabytes 220] [--repeat 3]`` measures, on a generated corpus (see
``gen_corpus.py``; a working copy is made so the cached corpus is never modified):

1. cold run: ``sessionpipe run --processor usage`` into a new database, in MB/s, beside
   ``ccusage claude monthly --json --offline`` over the same files (one ``CLAUDE_CONFIG_DIR`` per
   user), as a ratio; both with the files in the page cache (a warm-up pass reads them first);
2. incremental run: one session file gets one more line, then ``sessionpipe run`` again, beside
   ccusage's full re-read (it has no state), as a ratio; timed after :data:`SETTLING_RUNS` such
   runs that settle the snapshot's spare, whose times are printed too;
3. peak memory of the sessionpipe run: its process and its worker processes together (PSS summed
   over the process tree, sampled; see ``memory.py``), with the RSS sum and the runner's own peak,
   in a cold and an incremental run of their own. The timed runs are not sampled: reading
   ``/proc/*/smaps_rollup`` every 10 ms slowed both tools by about 0.4 s at 220 MB (ours 1.40 ->
   1.77 s, ccusage 1.23 -> 1.65 s);
4. a cross-check that both tools found the same total tokens.

Targets (2-core machine): cold ≥ 100 MB/s; incremental ≥ 20x faster than ccusage; peak memory < 500 MB.
Each figure is the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script (python bench/bench_usage.py) or as a module (-m)

from bench.gen_corpus import DEFAULT_OUT, ensure_corpus  # noqa: E402
from bench.memory import TreePeaks, TreeSampler  # noqa: E402
from tests import ccusage  # noqa: E402

MB = 1024 * 1024
TARGET_COLD_MB_S = 100.0
TARGET_INCREMENTAL_RATIO = 20.0
TARGET_PEAK_MEMORY_MB = 500.0


@dataclass
class Measured:
    seconds: float
    memory: TreePeaks | None  # None: not sampled
    stdout: str

    @property
    def peaks(self) -> TreePeaks:
        assert self.memory is not None, "a run timed without sampling its memory"
        return self.memory


def timed(command: list[str], env: dict[str, str] | None = None, *, sample: bool = False) -> Measured:
    """Run a command; its wall time, and with ``sample`` the peak memory of its process tree (the
    sampling slows the command: time runs without it)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    sampler = TreeSampler(process.pid) if sample else None
    # read before waiting so a large output cannot block the child; wait4 gives this child's rusage
    stdout = process.stdout.read()
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    memory = sampler.peaks(usage.ru_maxrss) if sampler is not None else None
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command[0]} exited {process.returncode}:\n{stderr}")
    return Measured(elapsed, memory, stdout)


def installed_env() -> dict[str, str]:
    """This environment as an installed sessionpipe runs in: with its bytecode cached.

    A shell that sets ``PYTHONDONTWRITEBYTECODE`` (this machine's does) makes every run compile
    sessionpipe's modules again, about 0.1 s that neither an installed package nor the image pays.
    """
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def sessionpipe_arguments(sessions: Path, db: Path) -> list[str]:
    return ["run", "--processor", "usage", "--sessions", str(sessions), "--db", str(db), "--json"]


def sessionpipe_run(sessions: Path, db: Path, *, sample: bool = False) -> Measured:
    script = Path(sys.executable).with_name("sessionpipe")
    return timed([str(script), *sessionpipe_arguments(sessions, db)], env=installed_env(), sample=sample)


def ccusage_env(config_dirs: list[Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCUSAGE", "CLAUDE_"))}
    env.update({"CLAUDE_CONFIG_DIR": ",".join(map(str, config_dirs)), "NO_COLOR": "1", "TZ": "UTC"})
    return env


def ccusage_monthly(launcher: Path, config_dirs: list[Path], *, sample: bool = False) -> Measured:
    command = [str(launcher), "claude", "monthly", "--json", "--offline", "--timezone", "UTC"]
    return timed(command, env=ccusage_env(config_dirs), sample=sample)


def corpus_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*.jsonl"))


def warm_page_cache(root: Path) -> None:
    for path in root.rglob("*.jsonl"):
        path.read_bytes()


def summary_of(measured: Measured) -> dict[str, Any]:
    line = [text for text in measured.stdout.splitlines() if text.startswith("{")][-1]
    data: dict[str, Any] = json.loads(line)
    return data


def our_total_tokens(db: Path) -> int:
    script = Path(sys.executable).with_name("sessionpipe")
    result = subprocess.run(
        [str(script), "report", "usage", "--by", "month", "--json", "--db", str(db)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(json.loads(result.stdout)["totals"]["totalTokens"])


T = TypeVar("T")

#: Incremental runs made, untimed, between the build of a database and the timed incremental runs.
#: A database's snapshot settles in three publishes of the database: the first finds no spare and
#: copies; the next two patch spares that were copies, which have no digests, so they compare them
#: with the database; from then on each publish patches the spare through its digests
#: (docs/architecture.md, step 12), as every run of a scheduled processor that checkpoints does.
#: Their times are printed beside the others.
SETTLING_RUNS = 3
#: The appended calls' numbers of the settling runs (the timed runs number theirs from 0).
SETTLING_FIRST_NUMBER = 100_000
#: The appended calls' numbers of the runs whose publish is timed (:func:`timed_publishes`).
PUBLISH_FIRST_NUMBER = 200_000


def settle(target_file: Path, run: Callable[[], T], first: int = SETTLING_FIRST_NUMBER) -> list[T]:
    """:data:`SETTLING_RUNS` incremental runs, each after one more call appended to ``target_file``
    (numbered from ``first``)."""
    settling = []
    for number in range(first, first + SETTLING_RUNS):
        append_call(target_file, number)
        settling.append(run())
    return settling


def append_call(path: Path, number: int) -> None:
    """One more API call at the end of a session, as Claude Code appends it."""
    line = {
        "parentUuid": None,
        "isSidechain": False,
        "userType": "external",
        "cwd": "/home/bench/src/app",
        "sessionId": path.stem,
        "version": "2.1.20",
        "gitBranch": "main",
        "message": {
            "id": f"msg_01benchappend{number:010d}",
            "type": "message",
            "role": "assistant",
            "model": "claude-opus-4-6",
            "content": [{"type": "text", "text": "Done."}],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "cache_read_input_tokens": 1200, "output_tokens": 42},
        },
        "requestId": f"req_011Cbenchappend{number:010d}",
        "type": "assistant",
        "uuid": f"00000000-0000-4000-8000-{number:012d}",
        "timestamp": "2026-03-27T12:00:00.000Z",
    }
    with path.open("ab") as handle:
        handle.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def corpus_arguments(description: str) -> argparse.Namespace:
    """The corpus and repetition options every usage benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--megabytes", type=int, default=220)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args()


def ccusage_config_dirs(sessions: Path, scratch: Path) -> list[Path]:
    """One Claude config folder per user of a sessions volume, its ``projects`` the user's folder."""
    config_dirs = []
    for user in sorted(p.name for p in sessions.iterdir() if p.is_dir()):
        config = scratch / "claude" / user
        config.mkdir(parents=True)
        (config / "projects").symlink_to(sessions / user, target_is_directory=True)
        config_dirs.append(config)
    return config_dirs


@dataclass
class CorpusRun:
    """What :func:`measure` found on one corpus: both tools' runs, interleaved, and the cross-check."""

    size: int  # bytes of session files
    files: int
    users: int
    cold: list[Measured]
    theirs_cold: list[Measured]
    settling: list[Measured]  # the untimed incremental runs before the timed ones (:data:`SETTLING_RUNS`)
    incremental: list[Measured]
    theirs_again: list[Measured]
    our_tokens: int
    their_tokens: int
    publish: list[float]  # seconds each of ``repeat`` more incremental runs took to publish DuckDB's log
    publish_database: list[float]  # and ``repeat`` runs that checkpointed, the database (:func:`timed_publishes`)
    memory: list[Measured]  # our cold and incremental run with the memory sampled (not timed)
    theirs_memory: Measured  # a cold ccusage run with the memory sampled

    def median(self, runs: str) -> float:
        measured: list[Measured] = getattr(self, runs)
        return statistics.median(m.seconds for m in measured)

    @property
    def peak_pss_mb(self) -> float:
        return max(m.peaks.pss_mb for m in self.memory)


def measure(source: Path, launcher: Path, repeat: int) -> CorpusRun:
    """Cold and incremental runs of both tools on a working copy of ``source``, interleaved."""

    with tempfile.TemporaryDirectory(prefix="bench-usage-") as scratch_name:
        scratch = Path(scratch_name)
        sessions = scratch / "sessions"
        shutil.copytree(source, sessions)
        # Write the copy out now: else the first run's commits (fsync, on ext4 a journal commit)
        # wait for the copy's dirty pages to reach the disk, which ccusage never waits for.
        os.sync()
        size = corpus_bytes(sessions)
        config_dirs = ccusage_config_dirs(sessions, scratch)
        warm_page_cache(sessions)

        cold: list[Measured] = []
        theirs_cold: list[Measured] = []
        for attempt in range(repeat):
            cold.append(sessionpipe_run(sessions, scratch / f"cold-{attempt}.duckdb"))
            theirs_cold.append(ccusage_monthly(launcher, config_dirs))
        db = scratch / f"cold-{repeat - 1}.duckdb"
        our_tokens = our_total_tokens(db)
        their_tokens = int(json.loads(theirs_cold[-1].stdout)["totals"]["totalTokens"])

        target_file = max(sessions.rglob("*.jsonl"), key=lambda p: p.stat().st_size)
        settling = settle(target_file, lambda: sessionpipe_run(sessions, db))
        # The cold runs' databases and snapshots are still being written back: a run's commit
        # (fsync, on ext4 a journal commit) would wait for them. A scheduled run comes long after.
        os.sync()
        incremental: list[Measured] = []
        theirs_again: list[Measured] = []
        for attempt in range(repeat):
            append_call(target_file, attempt)
            run = sessionpipe_run(sessions, db)
            summary = summary_of(run)
            assert summary["processed"] == 1 and summary["unchanged"] == summary["scanned"] - 1, summary
            incremental.append(run)
            theirs_again.append(ccusage_monthly(launcher, config_dirs))
        publish, publish_database = timed_publishes(sessions, db, target_file, repeat)
        append_call(target_file, 2 * repeat)
        memory = [sessionpipe_run(sessions, db, sample=True)]  # after the timed runs, as they were
        memory.append(sessionpipe_run(sessions, scratch / "sampled.duckdb", sample=True))
        theirs_memory = ccusage_monthly(launcher, config_dirs, sample=True)
        files = sum(1 for _ in sessions.rglob("*.jsonl"))
    return CorpusRun(
        size,
        files,
        len(config_dirs),
        cold,
        theirs_cold,
        settling,
        incremental,
        theirs_again,
        our_tokens,
        their_tokens,
        publish,
        publish_database,
        memory,
        theirs_memory,
    )


def timed_publish(sessions: Path, db: Path, target_file: Path, number: int, *, checkpoint: bool = False) -> float:
    """Seconds an incremental run (one more call appended to ``target_file``) took to publish its
    snapshot, timed inside that run (``bench.publish_probe``): DuckDB's log beside the snapshot, or
    with ``checkpoint`` the database, as a run does once the log has grown (every few dozen runs)."""
    append_call(target_file, number)
    flags = ["--checkpoint"] if checkpoint else []
    command = [sys.executable, "-m", "bench.publish_probe", *flags, *sessionpipe_arguments(sessions, db)]
    probe = subprocess.run(command, env=installed_env(), cwd=REPO, capture_output=True, text=True, check=True)
    lines = probe.stdout.splitlines()
    summary, timing = json.loads(lines[-2]), json.loads(lines[-1])
    assert summary["processed"] == 1, summary
    (seconds,), (kind,) = timing["publish_seconds"], timing["publish_kinds"]
    assert kind == ("database" if checkpoint else "log"), timing
    return float(seconds)


def timed_publishes(sessions: Path, db: Path, target_file: Path, repeat: int) -> tuple[list[float], list[float]]:
    """``repeat`` incremental runs' publishes of DuckDB's log; then ``repeat`` of the database, by
    runs made to checkpoint, after :data:`SETTLING_RUNS` untimed ones (see there)."""
    logs = [timed_publish(sessions, db, target_file, PUBLISH_FIRST_NUMBER + n) for n in range(repeat)]
    numbers = range(PUBLISH_FIRST_NUMBER + repeat, PUBLISH_FIRST_NUMBER + 2 * repeat + SETTLING_RUNS)
    databases = [timed_publish(sessions, db, target_file, n, checkpoint=True) for n in numbers]
    return logs, databases[SETTLING_RUNS:]


def main() -> int:
    args = corpus_arguments(__doc__.splitlines()[0])
    source = ensure_corpus(args.out, args.megabytes, args.users, args.seed)
    result = measure(source, ccusage.install(), args.repeat)
    size = result.size
    print(f"corpus: {size / MB:.1f} MB, {result.files} files, {result.users} users")
    cold, theirs_cold, incremental = result.cold, result.theirs_cold, result.incremental
    cold_s, ccusage_cold_s = result.median("cold"), result.median("theirs_cold")
    incremental_s, ccusage_again_s = result.median("incremental"), result.median("theirs_again")
    our_tokens, their_tokens = result.our_tokens, result.their_tokens
    ours = [m.peaks for m in result.memory]
    peak = result.peak_pss_mb
    cold_mb_s = size / MB / cold_s
    ratio = ccusage_again_s / incremental_s

    print(f"cold run:        sessionpipe {cold_s:.2f}s = {cold_mb_s:.0f} MB/s   (runs: {_list(cold)})")
    print(
        f"                 ccusage     {ccusage_cold_s:.2f}s = {size / MB / ccusage_cold_s:.0f} MB/s"
        f"   (runs: {_list(theirs_cold)})   sessionpipe/ccusage speed ratio {ccusage_cold_s / cold_s:.2f}x"
    )
    print(f"incremental run: sessionpipe {incremental_s:.3f}s after appending one line (runs: {_list(incremental)})")
    print(f"                 the {SETTLING_RUNS} settling runs before them: {_list(result.settling)}")
    print(f"                 ccusage re-reads everything: {ccusage_again_s:.2f}s   ratio {ratio:.1f}x")
    print(
        f"peak memory:     sessionpipe {peak:.0f} MB PSS over its {max(m.processes for m in ours)} processes "
        f"(RSS sum {max(m.rss_mb for m in ours):.0f} MB; the runner alone {max(m.main_rss_mb for m in ours):.0f} MB); "
        f"ccusage {result.theirs_memory.peaks.pss_mb:.0f} MB"
    )
    agree = "agree" if our_tokens == their_tokens else "DISAGREE"
    print(f"total tokens:    sessionpipe {our_tokens:,}, ccusage {their_tokens:,} ({agree})")
    print()
    print(
        f"target cold >= {TARGET_COLD_MB_S:.0f} MB/s: {verdict(cold_mb_s >= TARGET_COLD_MB_S)} ({cold_mb_s:.0f} MB/s)"
    )
    print(
        f"target incremental >= {TARGET_INCREMENTAL_RATIO:.0f}x faster than ccusage: "
        f"{verdict(ratio >= TARGET_INCREMENTAL_RATIO)} ({ratio:.1f}x)"
    )
    print(
        f"target peak memory < {TARGET_PEAK_MEMORY_MB:.0f} MB: {verdict(peak < TARGET_PEAK_MEMORY_MB)} "
        f"({peak:.0f} MB PSS, all processes)"
    )
    return 0 if our_tokens == their_tokens else 1


def _list(measured: list[Measured]) -> str:
    return ", ".join(f"{m.seconds:.2f}" for m in measured)


if __name__ == "__main__":
    raise SystemExit(main())
