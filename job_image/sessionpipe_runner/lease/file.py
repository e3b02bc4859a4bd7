"""The laptop lease: an advisory ``flock`` on a file beside the database.

The kernel drops the lock when the process dies, however it dies, so a crashed run never blocks
the next one. The file's content names the holder, so a waiting run can say who it waited for.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from sessionpipe_runner.lease import LeaseNotAcquired, announce_wait

POLL_SECONDS = 0.2


def lease_path(database: Path) -> Path:
    return database.with_name(database.name + ".lease")


class FileLease:
    """An exclusive ``flock`` on ``<database>.lease``."""

    def __init__(self, database: Path, processor: str) -> None:
        self._path = lease_path(database)
        self._processor = processor
        self._fd: int | None = None
        self._holder = f"{os.uname().nodename}:{os.getpid()}"

    @property
    def holder(self) -> str:
        return self._holder

    @property
    def name(self) -> str:
        return f"file:{self._path}"

    def acquire(self, wait_seconds: float) -> int:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(wait_seconds, 0.0)
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced and wait_seconds > 0:
                    announce_wait(self.name, self._read_holder(), wait_seconds)
                    announced = True
                if time.monotonic() >= deadline:
                    holder = self._read_holder()
                    os.close(fd)
                    raise LeaseNotAcquired(
                        f"database lease {self._path} is held by {holder}; waited {wait_seconds:g}s"
                    ) from None
                time.sleep(POLL_SECONDS)
        self._fd = fd
        record = {
            "holder": self._holder,
            "processor": self._processor,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        return 0

    def _read_holder(self) -> str:
        try:
            record = json.loads(self._path.read_text() or "{}")
        except (OSError, ValueError):
            return "another process"
        if not isinstance(record, dict) or "holder" not in record:
            return "another process"
        return f"{record['holder']} (processor {record.get('processor', '?')}, since {record.get('since', '?')})"

    def check(self) -> None:
        # An flock is held until released or the process dies: nothing can take it from us.
        return None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None
