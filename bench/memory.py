"""Peak memory of a whole process tree (a run and its worker processes), sampled from ``/proc``.

A run with worker processes is charged for all of them (a pod's memory limit counts every process
in it), so the benchmarks report the tree, not the command's process alone. Two sums are sampled:
PSS (proportional set size: a page shared by N processes counts 1/N in each, so the sum counts
shared libraries once, as the pod's cgroup does) and RSS (every process counted whole, an upper
bound). Sampling can miss a peak shorter than the interval, so the tree's figure is never reported
below the exact peak of the command's own process (``wait4`` rusage), which :class:`TreeSampler`'s
caller passes to :meth:`TreeSampler.peaks`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
SAMPLE_SECONDS = 0.01


@dataclass(frozen=True)
class TreePeaks:
    """Peak memory of a process tree, in MiB."""

    pss_mb: float  # sum of PSS over the tree at its sampled peak (what the run occupies)
    rss_mb: float  # sum of RSS over the tree at its sampled peak (shared pages counted per process)
    main_rss_mb: float  # the command's own process, exact (wait4)
    processes: int  # processes in the tree at the PSS peak


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in (PROC / str(pid) / "task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except OSError:
        pass  # the process ended between two reads
    return found


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB; zeros if it is gone."""
    pss = rss = 0
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return pss, rss


def tree_memory_kib(root: int) -> tuple[int, int, int]:
    """(PSS sum, RSS sum, process count) over ``root`` and all its descendants, now."""
    pids = [root]
    index = 0
    while index < len(pids):
        pids += _children(pids[index])
        index += 1
    pss = rss = 0
    for pid in pids:
        one_pss, one_rss = _memory_kib(pid)
        pss += one_pss
        rss += one_rss
    return pss, rss, len(pids)


class TreeSampler:
    """Samples a process tree's memory in a thread until :meth:`peaks` is called."""

    def __init__(self, root: int, interval: float = SAMPLE_SECONDS) -> None:
        self.root = root
        self.interval = interval
        self.peak_pss = self.peak_rss = self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="tree-memory", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            pss, rss, processes = tree_memory_kib(self.root)
            if pss > self.peak_pss:
                self.peak_pss, self.processes = pss, processes
            self.peak_rss = max(self.peak_rss, rss)
            self._stop.wait(self.interval)

    def peaks(self, main_rss_kib: int) -> TreePeaks:
        """Stop sampling; the peaks, with the root's exact peak RSS (``ru_maxrss``, KiB) as a floor."""
        self._stop.set()
        self._thread.join()
        return TreePeaks(
            pss_mb=max(self.peak_pss, main_rss_kib) / 1024,
            rss_mb=max(self.peak_rss, main_rss_kib) / 1024,
            main_rss_mb=main_rss_kib / 1024,
            processes=self.processes,
        )
