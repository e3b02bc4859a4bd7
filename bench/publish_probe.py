"""Run one ``sessionpipe`` command in this process and print, as JSON, how long each snapshot publish
in it took: the benchmarks' publish figure is a real run's own publish (after that run's changes,
with the spare the previous publish left), not a copy timed apart from any run.

    python -m bench.publish_probe run --processor usage --sessions DIR --db FILE --json
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from sessionpipe_runner import snapshot
from sessionpipe_runner.__main__ import main as sessionpipe_main


def main() -> int:
    seconds: list[float] = []
    publish = snapshot.publish_snapshot

    def timed_publish(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return publish(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    snapshot.publish_snapshot = timed_publish  # the runner looks it up on the module at each run
    code = sessionpipe_main(sys.argv[1:])
    print(json.dumps({"exit_code": code, "publish_seconds": seconds}))
    return code


if __name__ == "__main__":
    sys.exit(main())
