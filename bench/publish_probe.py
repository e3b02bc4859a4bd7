"""Run one ``sessionpipe`` command in this process and print, as JSON, how long each snapshot publish
in it took: the benchmarks' publish figure is a real run's own publish (after that run's changes,
with the spare the previous publish left, or of DuckDB's log), not a copy timed apart from any run.

    python -m bench.publish_probe [--checkpoint] run --processor usage --sessions DIR --db FILE --json

``--checkpoint`` makes the run checkpoint and publish the database, as a run does once DuckDB's log
has reached :data:`~sessionpipe_runner.snapshot.LOG_PUBLISH_LIMIT` (else a run with a small log
publishes the log).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from sessionpipe_runner import snapshot
from sessionpipe_runner.__main__ import main as sessionpipe_main


def main() -> int:
    arguments = sys.argv[1:]
    if arguments[:1] == ["--checkpoint"]:
        arguments = arguments[1:]
        snapshot.LOG_PUBLISH_LIMIT = 0  # read by checkpoint_needed at each run
    seconds: list[float] = []
    kinds: list[str] = []

    def timed(publish: Callable[..., Any], kind: str) -> Callable[..., Any]:
        def timed_publish(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return publish(*args, **kwargs)
            finally:
                seconds.append(time.perf_counter() - started)
                kinds.append(kind)

        return timed_publish

    # The runner looks them up on the module at each run: the database after a checkpoint, or
    # DuckDB's log beside the snapshot.
    snapshot.publish_snapshot = timed(snapshot.publish_snapshot, "database")
    snapshot.publish_log = timed(snapshot.publish_log, "log")
    code = sessionpipe_main(arguments)
    print(json.dumps({"exit_code": code, "publish_seconds": seconds, "publish_kinds": kinds}))
    return code


if __name__ == "__main__":
    sys.exit(main())
