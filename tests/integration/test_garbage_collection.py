"""A run collects garbage rarely and leaves what existed before it out of every collection
(``runner.fewer_collections``), and gives the collector back as it was."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import ClassVar

from sessionpipe_contract import EXIT_OK
from sessionpipe_runner.lease.file import FileLease
from sessionpipe_runner.processors.base import Output, Processor, SessionFile
from sessionpipe_runner.runner import RUN_GC_THRESHOLD, RunSettings, run


class _Watching(Processor):
    """Records the collector's state while it processes."""

    name = "watching"
    version = "1"
    seen: ClassVar[list[tuple[int, int]]] = []

    def process(self, session: SessionFile, data: bytes) -> Output:
        self.seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
        return Output(items=1)


def test_a_run_collects_rarely_and_gives_the_collector_back(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions" / "user" / "-proj"
    sessions.mkdir(parents=True)
    for index in range(3):
        (sessions / f"s{index}.jsonl").write_text('{"type": "user"}\n')
    db = tmp_path / "db.duckdb"
    before = (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled())
    settings = RunSettings(processor="watching", sessions=tmp_path / "sessions", database=db, lease_wait_seconds=5)
    _Watching.seen = []
    assert run(settings, _Watching(), FileLease(db, "watching")).exit_code == EXIT_OK
    assert len(_Watching.seen) == 3
    assert all(threshold == RUN_GC_THRESHOLD and frozen > before[1] for threshold, frozen in _Watching.seen)
    assert (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()) == before
