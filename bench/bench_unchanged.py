"""The re-run that finds nothing changed, over 100,000 small session files.

``python bench/bench_unchanged.py [--files 100000]`` writes (once, cached under ``bench/out/``) a
volume of small sessions — 50 users, 20 projects each, each session a user prompt and one API call
written over two streaming lines — runs ``sessionpipe run --processor usage`` once to process them all,
then runs it again with nothing changed and reports that run's wall time and files per second.

Target (2-core machine): the unchanged re-run over 100,000 files takes at most 1 s (issue 13).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
sys.path.insert(0, str(DEFAULT_OUT.parent.parent))  # run as a script or as a module (-m)

from bench.bench_usage import installed_env  # noqa: E402

USERS = 50
PROJECTS_PER_USER = 20
TARGET_SECONDS = 1.0  # issue 13 (was 3 s)


def session_lines(number: int) -> bytes:
    """A small but complete session: a prompt and one call written as two streaming lines."""
    session = f"00000000-0000-4000-8000-{number:012d}"
    envelope = {
        "isSidechain": False,
        "userType": "external",
        "cwd": f"/home/u/src/p{number % PROJECTS_PER_USER}",
        "sessionId": session,
        "version": "2.1.20",
        "gitBranch": "main",
    }
    prompt = {"parentUuid": None, **envelope, "type": "user", "message": {"role": "user", "content": "run the tests"}}
    prompt |= {"uuid": f"{number:08x}-0000-4000-8000-000000000001", "timestamp": "2026-02-10T09:00:00.000Z"}
    lines = [prompt]
    for index, output in enumerate((12, 57)):
        call = {"parentUuid": lines[-1]["uuid"], **envelope}
        call["message"] = {
            "id": f"msg_01small{number:012d}",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "All 12 tests pass."}],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 4,
                "cache_creation_input_tokens": 320,
                "cache_read_input_tokens": 14000,
                "cache_creation": {"ephemeral_5m_input_tokens": 320, "ephemeral_1h_input_tokens": 0},
                "output_tokens": output,
                "service_tier": "standard",
            },
        }
        call |= {
            "requestId": f"req_011Csmall{number:012d}",
            "type": "assistant",
            "uuid": f"{number:08x}-0000-4000-8000-00000000000{index + 2}",
            "timestamp": f"2026-02-10T09:00:0{index + 3}.000Z",
        }
        lines.append(call)
    return b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines)


def ensure_volume(out: Path, files: int) -> Path:
    root = out / f"small-{files}"
    marker = root.with_name(root.name + ".complete")
    if marker.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("*\n")
    started = time.perf_counter()
    for number in range(files):
        user = f"user{number % USERS:03d}"
        project = f"-home-{user}-src-p{(number // USERS) % PROJECTS_PER_USER}"
        folder = root / user / project
        if number < USERS * PROJECTS_PER_USER:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"00000000-0000-4000-8000-{number:012d}.jsonl").write_bytes(session_lines(number))
    marker.write_text(f"{files} files\n")
    print(f"wrote {files} session files in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return root


def run(sessions: Path, db: Path) -> tuple[float, dict[str, object]]:
    script = Path(sys.executable).with_name("sessionpipe")
    command = [str(script), "run", "--processor", "usage", "--sessions", str(sessions), "--db", str(db), "--json"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=installed_env())
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"sessionpipe exited {result.returncode}:\n{result.stderr}")
    summary: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return elapsed, summary


def measure_unchanged(out: Path, files: int, repeat: int) -> tuple[float, list[float], int]:
    """(first run's seconds, each unchanged re-run's seconds, the database's bytes) over ``files`` small files."""
    sessions = ensure_volume(out, files)
    with tempfile.TemporaryDirectory(prefix="bench-unchanged-") as scratch:
        db = Path(scratch) / "usage.duckdb"
        first, summary = run(sessions, db)
        assert summary["processed"] == files, summary
        again = []
        for _ in range(repeat):
            elapsed, summary = run(sessions, db)
            assert summary["unchanged"] == files and summary["hashed"] == 0, summary
            again.append(elapsed)
        return first, again, db.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    first, again, db_bytes = measure_unchanged(args.out, args.files, args.repeat)
    print(f"first run: {first:.2f}s for {args.files:,} files ({args.files / first:,.0f} files/s)")
    best = statistics.median(again)
    print(
        f"unchanged re-run: {best:.2f}s median ({', '.join(f'{s:.2f}' for s in again)}), "
        f"{args.files / best:,.0f} files/s; database {db_bytes / 2**20:.0f} MB"
    )
    ok = best <= TARGET_SECONDS
    print(
        f"target unchanged re-run over {args.files:,} files <= {TARGET_SECONDS:.0f}s: "
        f"{'MET' if ok else 'MISSED'} ({best:.2f}s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
