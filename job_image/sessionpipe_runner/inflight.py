"""Candidates examined by several threads at once, for processors that mostly wait on the network.

A processor that calls a remote API per session (``verification``) spends its time waiting for
answers, not computing: it may declare, through
:meth:`~sessionpipe_runner.processors.base.Processor.calls_in_flight`, how many sessions it can have
in :meth:`~sessionpipe_runner.processors.base.Processor.process` at once. :func:`examine_in_threads`
then reads and processes that many candidates at a time in threads, and hands the results back in
candidate order, so the runner still commits one session at a time, in its own thread, exactly as
when it examines them itself.

The threads are daemons and are never joined: when the run ends early (SIGTERM, a lost lease, a
failed run), :meth:`~sessionpipe_runner.processors.base.Processor.cancel` tells the processor to
send nothing more, results still arriving are dropped, and a call still waiting on the network
cannot hold the process open.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Generator, Iterable
from concurrent.futures import Future

from sessionpipe_runner import work
from sessionpipe_runner.processors.base import Processor, SessionFile
from sessionpipe_runner.reading import Committed
from sessionpipe_runner.work import Examined

Task = tuple[SessionFile, Committed | None]
_STOP = None


class _Threads:
    """``count`` daemon threads examining tasks from a queue, each into its future."""

    def __init__(self, processor: Processor, count: int) -> None:
        self.processor = processor
        self.tasks: queue.SimpleQueue[tuple[Task, Future[Examined]] | None] = queue.SimpleQueue()
        self.closed = threading.Event()
        self.count = count
        self.threads = [
            threading.Thread(target=self._serve, name=f"sessionpipe-call-{n}", daemon=True) for n in range(count)
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, task: Task) -> Future[Examined]:
        future: Future[Examined] = Future()
        self.tasks.put((task, future))
        return future

    def _serve(self) -> None:
        while True:
            entry = self.tasks.get()
            if entry is _STOP:
                return
            (file, known), future = entry
            if self.closed.is_set() or not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work.examine(self.processor, file, known))
            except BaseException as error:  # examine() catches the processor's own errors
                future.set_exception(error)

    def close(self) -> None:
        """Start nothing more; the threads end once their current task returns."""
        self.closed.set()
        for _ in range(self.count):
            self.tasks.put(_STOP)

    def join(self) -> None:
        """Wait for idle threads to end (after :meth:`close`, when nothing is in flight)."""
        for thread in self.threads:
            thread.join()


def examine_in_threads(processor: Processor, candidates: Iterable[Task], count: int) -> Generator[Examined]:
    """Each candidate's :class:`~sessionpipe_runner.work.Examined`, in candidate order, ``count`` at a time.

    At most ``count`` candidates are being examined and at most ``count`` more wait, examined, for
    the runner to take them, so memory stays bounded however slow the commits are. When the
    consumer stops early (it raises, or closes the generator), the processor is cancelled and
    nothing more is started.
    """
    threads = _Threads(processor, count)
    waiting: collections.deque[Future[Examined]] = collections.deque()
    tasks = iter(candidates)
    exhausted = False
    try:
        while waiting or not exhausted:
            while not exhausted and len(waiting) < 2 * count:
                task = next(tasks, None)
                if task is None:
                    exhausted = True
                else:
                    waiting.append(threads.submit(task))
            if waiting:
                yield waiting.popleft().result()
    finally:
        threads.close()
        for future in waiting:
            future.cancel()
        if waiting:
            processor.cancel()
        else:  # every task returned: the threads are idle and end at once
            threads.join()
