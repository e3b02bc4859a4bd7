"""Run ``sessionpipe`` with a slow snapshot publish: ``python slow_publish_wrapper.py MARK -- ARGS…``.

Test-only. The snapshot's copy is made, then ``MARK`` is created and the copy waits 30 s before
returning, so a test can send SIGTERM while the runner publishes the snapshot.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    mark, separator, *args = sys.argv[1:]
    assert separator == "--", "usage: slow_publish_wrapper.py MARK -- ARGS…"
    real_copyfile = shutil.copyfile

    def slow_copyfile(source: Any, target: Any, **kwargs: Any) -> Any:
        copied = real_copyfile(source, target, **kwargs)
        if str(target).endswith(".tmp"):
            Path(mark).touch()
            time.sleep(30)
        return copied

    shutil.copyfile = slow_copyfile  # type: ignore[assignment]
    from sessionpipe_runner.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
