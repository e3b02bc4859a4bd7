"""The command line: build the control plane, or run one that outlives the command.

From a shell::

    python -m sessionpipe_kubetest build   # compile the binaries into the cache (needs Go)
    python -m sessionpipe_kubetest up      # starts in the background, writes .cluster/kubeconfig
    kubectl --kubeconfig .cluster/kubeconfig get ns
    python -m sessionpipe_kubetest down
    python -m sessionpipe_kubetest images  # build the job and operator images with buildah
    python -m sessionpipe_kubetest image-smoke SESSIONS OUT  # a usage run in the job image
    python -m sessionpipe_kubetest demo    # up, images, the chart on a demo corpus, a usage run now
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sessionpipe_kubetest import build, demo, images
from sessionpipe_kubetest.build import toolset
from sessionpipe_kubetest.cluster import MISSING_BINARIES_HINT, ControlPlane, KubeconfigKubectl, log_tail
from sessionpipe_kubetest.paths import REPOSITORY

#: Where a control plane started with ``up`` keeps its pid, kubeconfig, logs and state.
CLUSTER_DIR = REPOSITORY / ".cluster"


def _pid_file() -> Path:
    return CLUSTER_DIR / "pid"


def _running_pid() -> int | None:
    try:
        pid = int(_pid_file().read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def _serve() -> int:
    """Run a control plane in the foreground until SIGTERM/SIGINT; publish .cluster/kubeconfig."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    state = CLUSTER_DIR / "state"
    shutil.rmtree(state, ignore_errors=True)
    plane = ControlPlane(state)
    plane.start()
    try:
        _pid_file().write_text(f"{os.getpid()}\n")
        shutil.copyfile(plane.kubeconfig, CLUSTER_DIR / "kubeconfig.tmp")
        (CLUSTER_DIR / "kubeconfig.tmp").replace(CLUSTER_DIR / "kubeconfig")
        print(f"control plane ready in {plane.startup_seconds:.1f}s at {plane.server}", flush=True)
        stop.wait()
    finally:
        plane.stop()
        (CLUSTER_DIR / "kubeconfig").unlink(missing_ok=True)
        _pid_file().unlink(missing_ok=True)
    return 0


def _up() -> int:
    pid = _running_pid()
    kubeconfig = CLUSTER_DIR / "kubeconfig"
    if pid is not None:
        print(f"already running (pid {pid}); export KUBECONFIG={kubeconfig}")
        return 0
    if not toolset().complete:
        print(MISSING_BINARIES_HINT, file=sys.stderr)
        return 1
    CLUSTER_DIR.mkdir(exist_ok=True)
    kubeconfig.unlink(missing_ok=True)
    log_path = CLUSTER_DIR / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sessionpipe_kubetest", "serve"],
            cwd=REPOSITORY,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the shell that ran `up`
        )
    deadline = time.monotonic() + 180
    while not kubeconfig.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            print(f"control plane failed to start; see {log_path}:\n{log_tail(log_path)}", file=sys.stderr)
            if process.poll() is None:
                process.terminate()
            return 1
        time.sleep(0.2)
    print(log_tail(log_path, 1))
    print(f"pid {process.pid}; logs in {CLUSTER_DIR / 'state'}")
    print(f"export KUBECONFIG={kubeconfig} PATH={toolset().bin_dir}:$PATH")
    return 0


def _down() -> int:
    pid = _running_pid()
    if pid is None:
        print("not running")
        _pid_file().unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _running_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    if _running_pid() is not None:
        os.kill(pid, signal.SIGKILL)
        _pid_file().unlink(missing_ok=True)
        (CLUSTER_DIR / "kubeconfig").unlink(missing_ok=True)
    print(f"stopped (pid {pid})")
    return 0


def _image_smoke(sessions: Path, out: Path) -> int:
    """The job image's ``sessionpipe run --processor usage`` on ``sessions`` (bound read-only),
    with the database in ``out/sessionpipe.duckdb``, as the image's user on a read-only root."""
    if not out.exists():
        # The image's user (not root) writes the database: a folder made here is writable for it;
        # an existing one is left as it is (the run then says if it cannot write there).
        out.mkdir(parents=True)
        out.chmod(0o777)
    run = images.ImageRun(
        image=images.image_tag("job"),
        args=["run", "--processor", "usage", "--sessions", "/sessions", "--db", "/out/sessionpipe.duckdb"],
        binds=[images.Bind(sessions.resolve(), "/sessions"), images.Bind(out.resolve(), "/out", read_only=False)],
    )
    try:
        result = subprocess.run(run.launch(), check=False)
    except images.ImageError as error:
        print(f"image-smoke: {error}", file=sys.stderr)
        return 1
    return result.returncode


def _demo() -> int:
    """``make demo-cluster``: :mod:`.demo` on the control plane of ``up`` (started when not running)."""
    if _up() != 0:
        return 1
    images.build_all()
    tools = toolset()
    kubeconfig = CLUSTER_DIR / "kubeconfig"
    the_demo = demo.Demo(
        cluster=KubeconfigKubectl(tools.path("kubectl"), kubeconfig),
        kubeconfig=kubeconfig,
        helm=tools.path("helm"),
        directory=CLUSTER_DIR / "demo",
    )
    result = demo.run(the_demo)
    print(demo.next_steps(the_demo, result))
    return 0 if result.succeeded else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sessionpipe_kubetest", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command",
        choices=["build", "up", "down", "serve", "images", "image-smoke", "demo"],
        help="serve runs a control plane in the foreground",
    )
    parser.add_argument("paths", nargs="*", type=Path, help="image-smoke: SESSIONS OUT")
    args = parser.parse_args(argv)
    if args.command == "image-smoke":
        if len(args.paths) != 2:
            parser.error("image-smoke takes SESSIONS and OUT")
        return _image_smoke(args.paths[0], args.paths[1])
    if args.paths:
        parser.error(f"{args.command} takes no paths")
    commands = {"build": build.main, "up": _up, "down": _down, "serve": _serve, "images": images.main, "demo": _demo}
    return commands[args.command]()


if __name__ == "__main__":
    sys.exit(main())
