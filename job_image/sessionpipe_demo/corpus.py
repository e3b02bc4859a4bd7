"""The demo corpus: sessions of several users over several months, written as a sessions volume."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sessionpipe_demo.session import SessionWriter
from sessionpipe_demo.world import (
    BRANCHES,
    FIRST_DAY,
    IDENTIFIERS,
    LAST_DAY,
    MODELS,
    REPOSITORIES,
    RETIRED,
    USERS,
    VERSIONS,
    WORDS,
    dumps,
    iso,
    size_of,
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


class Generator:
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
        text = iso(moment)
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
        writer = SessionWriter(self, user, cwd, session_id, version, rng.choice(BRANCHES), start)
        lines: list[bytes] = []
        previous = self.last_session.get((user, repository))
        budget = self.target - self.stats.bytes
        if previous is not None and rng.random() < 0.2 and previous[1] < start and size_of(previous[0]) < budget // 2:
            # a resumed session: Claude Code copies the conversation so far into the new file
            copied, _ = previous
            lines.extend(copied)
            self.stats.resumed_sessions += 1
        writer.preamble(lines)
        turns = min(40, 1 + int(rng.expovariate(1 / 5)))  # most sessions are short, a few are long
        for _ in range(turns):
            writer.turn(lines)
            if size_of(lines) >= budget:
                break
        if rng.random() < 0.3:
            lines.insert(0, dumps({"type": "summary", "summary": self.prose(6)[:60], "leafUuid": writer.parent}))
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
            if size_of(prefix) > self.target - self.stats.bytes:
                return
            self.write(Path(other) / slug / f"{session_id}.jsonl", prefix, end)
            self.seen_projects.add((other, slug))
            self.stats.sessions += 1
            self.stats.copied_sessions += 1


def generate_corpus(out: Path, users: int, target_bytes: int, seed: int) -> CorpusStats:
    """Write about ``target_bytes`` of transcripts for ``users`` users under ``out``; same seed, same files.

    The corpus stops at the first turn that reaches ``target_bytes`` (a turn or a subagent file more
    at most). Existing files of the same names are overwritten; nothing else under ``out`` is touched.
    """
    if users < 1:
        raise ValueError("users must be 1 or more")
    if target_bytes < 1:
        raise ValueError("target_bytes must be 1 or more")
    return Generator(out, users, target_bytes, seed).run()


def iter_session_files(root: Path) -> Iterator[Path]:
    """Every ``.jsonl`` file under ``root``, in a stable order."""
    yield from sorted(root.rglob("*.jsonl"))
