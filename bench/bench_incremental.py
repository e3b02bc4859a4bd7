"""The incremental run alone (one appended line in one file) beside ccusage, optionally A/B against another build.

``python -m bench.bench_incremental [--megabytes 1000 --users 16 --seed 2] [--repeat 3] [--base DIR]``

On a working copy of a generated corpus (``gen_corpus.py``; the cached corpus is never modified),
one untimed ``sessionpipe run`` builds the database; then, ``--repeat`` times: one more API call is
appended to the largest file and ``sessionpipe run`` takes it in (after the untimed settling runs
of ``bench_usage.SETTLING_RUNS``), then (with ``--base``) one more
call is appended and the build in ``DIR`` (a checkout whose ``job_image`` and ``common`` go on
``PYTHONPATH``, e.g. ``git archive <commit> | tar -x -C DIR``) takes it in, on its own copy of the
database (so that neither build's runs change the state the other's next run starts from), then ccusage re-reads
everything. The runs are interleaved, so a load that changes during the measurement weighs on all
of them alike. Each run's wall and CPU (user + system, its process tree) seconds are printed, then
the medians and the ratio to ccusage; the total tokens of the database are checked against
ccusage's last answer. ``bench_targets --skip-cold`` uses this instead of the cold and incremental
measurement of ``bench_usage``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script or as a module (-m)

from bench.bench_usage import (  # noqa: E402
    MB,
    SETTLING_FIRST_NUMBER,
    SETTLING_RUNS,
    append_call,
    ccusage_config_dirs,
    ccusage_env,
    corpus_bytes,
    installed_env,
    our_total_tokens,
    settle,
    timed_publishes,
    warm_page_cache,
)
from bench.gen_corpus import DEFAULT_OUT, ensure_corpus  # noqa: E402
from tests import ccusage  # noqa: E402


@dataclass
class Timed:
    wall: float
    cpu: float  # user + system seconds of the process and the children it waited for
    stdout: str


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def run_timed(command: list[str], env: dict[str, str]) -> Timed:
    """Run ``command``; its wall seconds and the CPU seconds it added to this process's children totals."""
    cpu_before, started = _children_cpu(), time.perf_counter()
    process = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - started, _children_cpu() - cpu_before
    if process.returncode != 0:
        raise SystemExit(f"{command[0]} exited {process.returncode}:\n{process.stderr}")
    return Timed(wall, cpu, process.stdout)


def sessionpipe_command(sessions: Path, db: Path, *, as_module: bool = False) -> list[str]:
    """This build's console script; with ``as_module``, ``python -m sessionpipe_runner`` (what the
    console script of a build on ``PYTHONPATH`` does: its entry function may not be this one's)."""
    launcher = (
        [sys.executable, "-m", "sessionpipe_runner"]
        if as_module
        else [str(Path(sys.executable).with_name("sessionpipe"))]
    )
    return [*launcher, "run", "--processor", "usage", "--sessions", str(sessions), "--db", str(db), "--json"]


def base_env(base: Path) -> dict[str, str]:
    """The environment in which ``sessionpipe`` runs the build checked out in ``base``."""
    env = installed_env()
    env["PYTHONPATH"] = os.pathsep.join([str(base / "job_image"), str(base / "common")])
    return env


@dataclass
class IncrementalRun:
    size: int
    files: int
    ours: list[Timed] = field(default_factory=list)
    base: list[Timed] = field(default_factory=list)
    theirs: list[Timed] = field(default_factory=list)
    settling: list[Timed] = field(default_factory=list)  # untimed in the ratio (bench_usage.SETTLING_RUNS)
    publish: list[float] = field(default_factory=list)
    publish_database: list[float] = field(default_factory=list)
    our_tokens: int = 0
    their_tokens: int = 0

    @property
    def ratio(self) -> float:
        """ccusage's median wall time over this build's."""
        return statistics.median(m.wall for m in self.theirs) / statistics.median(m.wall for m in self.ours)


def measure_incremental(source: Path, launcher: Path, repeat: int, base: Path | None = None) -> IncrementalRun:
    """Incremental runs of this build (and of ``base``) beside ccusage, interleaved, on a copy of ``source``."""
    with tempfile.TemporaryDirectory(prefix="bench-incremental-") as scratch_name:
        scratch = Path(scratch_name)
        sessions = scratch / "sessions"
        shutil.copytree(source, sessions)
        config_dirs = ccusage_config_dirs(sessions, scratch)
        warm_page_cache(sessions)
        db = scratch / "usage.duckdb"
        command = sessionpipe_command(sessions, db)
        run_timed(command, installed_env())  # the database the incremental runs start from
        os.sync()  # its writes reach the disk first, as a scheduled run's long before the next (bench_usage)
        result = IncrementalRun(corpus_bytes(sessions), sum(1 for _ in sessions.rglob("*.jsonl")))
        target_file = max(sessions.rglob("*.jsonl"), key=lambda p: p.stat().st_size)
        variants = [(result.ours, installed_env(), command)]
        if base is not None:
            # Its own copy of the database: a run of one build must not change the state the other's
            # next run starts from (this build's scan index is trusted only if the state is the one indexed).
            base_db = scratch / "base.duckdb"
            shutil.copyfile(db, base_db)
            variants.append((result.base, base_env(base), sessionpipe_command(sessions, base_db, as_module=True)))
        for position, (_, env, variant_command) in enumerate(variants):
            first = SETTLING_FIRST_NUMBER + position * SETTLING_RUNS
            result.settling.extend(settle(target_file, functools.partial(run_timed, variant_command, env), first))
        os.sync()  # the settling runs' writes too
        number = 0
        for _ in range(repeat):
            for runs, env, variant_command in variants:
                append_call(target_file, number)
                number += 1
                measured = run_timed(variant_command, env)
                summary = json.loads(measured.stdout.splitlines()[-1])
                assert summary["processed"] == 1 and summary["unchanged"] == summary["scanned"] - 1, summary
                runs.append(measured)
            theirs = [str(launcher), "claude", "monthly", "--json", "--offline", "--timezone", "UTC"]
            result.theirs.append(run_timed(theirs, ccusage_env(config_dirs)))
        if base is not None:
            run_timed(command, installed_env())  # untimed: this build's database takes in the base's last call too
        result.our_tokens = our_total_tokens(db)
        result.their_tokens = int(json.loads(result.theirs[-1].stdout)["totals"]["totalTokens"])
        result.publish, result.publish_database = timed_publishes(sessions, db, target_file, repeat)
    return result


def _runs(runs: list[Timed]) -> str:
    return ", ".join(f"{m.wall:.3f}s/{m.cpu:.3f}cpu" for m in runs)


def report(result: IncrementalRun) -> list[str]:
    """Medians, ratios to ccusage, and each run."""
    theirs = statistics.median(m.wall for m in result.theirs)
    lines = [f"{result.size / MB:,.0f} MB, {result.files:,} files: ccusage {theirs:.2f}s ({_runs(result.theirs)})"]
    for name, runs in (("this build", result.ours), ("base", result.base)):
        if runs:
            wall, cpu = statistics.median(m.wall for m in runs), statistics.median(m.cpu for m in runs)
            lines.append(
                f"  {name}: incremental {wall:.3f}s wall, {cpu:.3f}s CPU (medians) = {theirs / wall:.1f}x ccusage"
                f" ({_runs(runs)})"
            )
    lines.append(f"  the {SETTLING_RUNS} settling runs of each build before them: {_runs(result.settling)}")
    publish, publish_database = statistics.median(result.publish), statistics.median(result.publish_database)
    ours = statistics.median(m.wall for m in result.ours)
    lines.append(
        f"  snapshot publish: the log {publish:.3f}s = {publish / ours:.0%}, the database (a run that checkpoints) "
        f"{publish_database:.3f}s = {publish_database / ours:.0%} of this build's incremental run"
    )
    agree = "equal" if result.our_tokens == result.their_tokens else "DIFFER"
    lines.append(f"  total tokens after the appends: {result.our_tokens:,} / ccusage {result.their_tokens:,} ({agree})")
    lines.append(f"  load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=1000)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--base", type=Path, help="a checkout of the build to compare with (its job_image, common)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    source = ensure_corpus(args.out, args.megabytes, args.users, args.seed)
    result = measure_incremental(source, ccusage.install(), args.repeat, args.base)
    print("\n".join(report(result)))
    return 0 if result.our_tokens == result.their_tokens else 1


if __name__ == "__main__":
    raise SystemExit(main())
