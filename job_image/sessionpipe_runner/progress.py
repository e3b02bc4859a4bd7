"""How far a run has got: files and bytes done of those it set out to read, rate and time left.

The accounting and its formats are pure (times are passed in), so tests need no clock and no
terminal. The edges that show it live here too, thin: a bar redrawn on a terminal, a log line every
few seconds elsewhere (a pod's log), and the Lease annotation the operator reads
(:data:`sessionpipe_contract.ANNOTATION_PROGRESS`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

log = logging.getLogger("sessionpipe_runner.progress")

#: Without a terminal, a progress line at most this often (a pod's log stays readable).
LOG_EVERY_SECONDS = 5.0
#: On a terminal, the bar is redrawn at most this often.
REDRAW_EVERY_SECONDS = 0.2
BAR_WIDTH = 24


@dataclass
class Progress:
    """Candidates a run set out to read, and how many of them (and of their bytes) are done.

    A candidate is done once the run has dealt with it, whatever the outcome: processed, failed,
    skipped or left for the next run. ``started`` is a :func:`time.monotonic` reading.
    """

    processor: str
    files_total: int
    bytes_total: int
    started: float
    files_done: int = 0
    bytes_done: int = 0

    def advance(self, size: int) -> None:
        """One more candidate of ``size`` bytes dealt with."""
        self.files_done += 1
        self.bytes_done += max(size, 0)

    def rate(self, now: float) -> float:
        """Bytes per second so far; 0 before any time has passed."""
        elapsed = now - self.started
        return self.bytes_done / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self, now: float) -> float | None:
        """Seconds left at the rate so far; ``None`` while there is no rate to go by."""
        if self.files_done >= self.files_total:
            return 0.0
        rate = self.rate(now)
        if rate <= 0:
            return None
        return max(self.bytes_total - self.bytes_done, 0) / rate

    def fields(self, now: float) -> dict[str, Any]:
        """The progress as named numbers, for a structured log line."""
        eta = self.eta_seconds(now)
        return {
            "processor": self.processor,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "bytes_per_second": round(self.rate(now), 1),
            "eta_seconds": None if eta is None else round(eta, 1),
        }

    def annotation(self) -> str:
        """The Lease annotation's value: compact JSON the operator turns into the PROGRESS column."""
        return json.dumps(
            {
                "processor": self.processor,
                "filesDone": self.files_done,
                "filesTotal": self.files_total,
                "bytesDone": self.bytes_done,
                "bytesTotal": self.bytes_total,
            },
            separators=(",", ":"),
        )


# --- formats ----------------------------------------------------------------------------------------
def human_bytes(count: float) -> str:
    """``count`` bytes in decimal units, as ``ls -h --si`` and most download bars show them."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """``H:MM:SS`` or ``M:SS``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def summary_text(progress: Progress, now: float) -> str:
    """``1,234/5,000 files, 12.3 MB/45.6 MB, 1.2 MB/s, ETA 0:27``: one line for a log or a bar."""
    return (
        f"{progress.files_done:,}/{progress.files_total:,} files, "
        f"{human_bytes(progress.bytes_done)}/{human_bytes(progress.bytes_total)}, "
        f"{human_bytes(progress.rate(now))}/s, ETA {human_duration(progress.eta_seconds(now))}"
    )


def bar_text(progress: Progress, now: float, width: int = BAR_WIDTH) -> str:
    """A bar filled by the share of bytes done (files, when there are no bytes), then the summary."""
    if progress.bytes_total:
        share = progress.bytes_done / progress.bytes_total
    else:
        share = progress.files_done / progress.files_total if progress.files_total else 1.0
    share = min(max(share, 0.0), 1.0)
    filled = int(share * width)
    return f"{progress.processor} [{'#' * filled}{'.' * (width - filled)}] {share:4.0%} {summary_text(progress, now)}"


# --- edges ------------------------------------------------------------------------------------------
@dataclass
class Throttle:
    """True at most once per ``every`` seconds (and always for the first call)."""

    every: float
    last: float | None = field(default=None)

    def due(self, now: float) -> bool:
        if self.last is not None and now - self.last < self.every:
            return False
        self.last = now
        return True


class TerminalBar:
    """A bar redrawn in place on a terminal (``stream``), erased when the run ends."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.throttle = Throttle(REDRAW_EVERY_SECONDS)
        self.drawn = False

    def __call__(self, progress: Progress) -> None:
        now = self.clock()
        if not self.throttle.due(now) and progress.files_done < progress.files_total:
            return
        self.stream.write("\r\x1b[2K" + bar_text(progress, now))
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


class ProgressLog:
    """A progress line on the runner's logger every :data:`LOG_EVERY_SECONDS` (a pod has no terminal).

    The numbers ride along as the record's ``progress`` attribute, which the JSON log format writes
    as fields.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, every: float = LOG_EVERY_SECONDS) -> None:
        self.clock = clock
        self.throttle = Throttle(every)

    def __call__(self, progress: Progress) -> None:
        now = self.clock()
        if not self.throttle.due(now):
            return
        log.info("progress: %s", summary_text(progress, now), extra={"progress": progress.fields(now)})

    def close(self) -> None:
        """Nothing to undo: log lines stay."""
