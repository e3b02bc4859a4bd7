"""``make demo-cluster``: the whole flow on the local control plane, as a person would try it.

Generated demo transcripts (``sessionpipe demo``) and a database folder become PersistentVolumes
bound to the chart's claims, the chart is installed with the local images, the ``usage``
SessionProcessor runs now, and the command prints what to type next. Every step is idempotent:
running it again reuses the corpus, the volumes and the release, and starts one more run.

sessionpipe itself is only used through its command line (this package imports none of it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sessionpipe_kubetest import images
from sessionpipe_kubetest.paths import REPOSITORY
from sessionpipe_kubetest.volumes import Kubectl, bind_directory
from sessionpipe_kubetest.waiting import wait_for

CHART = REPOSITORY / "charts" / "sessionpipe"
RELEASE = "sessionpipe"
NAMESPACE = "sessionpipe"
PROCESSOR = "usage"
SESSIONS_CLAIM = "transcripts"
DATABASE_CLAIM = "sessionpipe-db"
#: The annotation ``sessionpipe run-now`` sets (sessionpipe_contract.ANNOTATION_RUN_NOW).
RUN_NOW = "sessionpipe.io/run-now"
#: The job image's user, who writes the database (Dockerfile.job).
JOB_IMAGE_UID = 10001


@dataclass(frozen=True)
class Demo:
    """Where the demo keeps its files and which cluster it talks to.

    :param cluster: runs kubectl against the cluster.
    :param kubeconfig: the same cluster's kubeconfig, for helm and for the printed commands.
    :param helm: the helm binary.
    :param directory: the demo's own folder: ``sessions/`` (generated transcripts) and ``database/``.
    :param namespace: where the chart is installed; its operator watches only this namespace.
    :param megabytes: about how much transcript data to generate (once).
    :param dashboard_port: the dashboard's port; this control plane's pods share the host's network,
        so it is also where the dashboard answers on this machine.
    """

    cluster: Kubectl
    kubeconfig: Path
    helm: Path
    directory: Path
    namespace: str = NAMESPACE
    megabytes: int = 4
    dashboard_port: int = 8000

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def sessions(self) -> Path:
        return self.directory / "sessions"

    @property
    def database(self) -> Path:
        return self.directory / "database"


@dataclass(frozen=True)
class RunResult:
    """How the demo's run of ``usage`` ended: its Job and the SessionProcessor's ``status.lastRun``."""

    job: str
    last_run: dict[str, Any]
    seconds: float

    @property
    def succeeded(self) -> bool:
        return self.last_run.get("outcome") == "succeeded"


def generate_corpus(demo: Demo) -> None:
    """Write the demo transcripts once (``sessionpipe demo``); a finished corpus is kept as it is."""
    done = demo.directory / "sessions.done"
    if done.exists():
        return
    sessionpipe = Path(sys.executable).parent / "sessionpipe"
    subprocess.run(
        [str(sessionpipe), "demo", "--out", str(demo.sessions), "--megabytes", str(demo.megabytes)], check=True
    )
    done.write_text(f"{demo.megabytes} MB\n")


def prepare_volumes(demo: Demo) -> None:
    """The namespace, and the two claims bound to PVs of the demo's folders (transcripts read-only)."""
    demo.database.mkdir(parents=True, exist_ok=True)
    demo.database.chmod(0o777)  # the job image's user writes the database
    if demo.cluster.kubectl("get", "namespace", demo.namespace, "--ignore-not-found", "-o", "name").stdout == "":
        demo.cluster.kubectl("create", "namespace", demo.namespace)
    bind_directory(demo.cluster, demo.namespace, SESSIONS_CLAIM, demo.sessions, read_only=True)
    bind_directory(demo.cluster, demo.namespace, DATABASE_CLAIM, demo.database)


def helm_values(demo: Demo) -> list[str]:
    """The chart values of the demo: the local images, the two claims :func:`prepare_volumes` binds,
    and the dashboard's port."""
    values: list[str] = []
    for kind in images.KINDS:
        repository, tag = images.image_tag(kind).rsplit(":", 1)
        values += ["--set", f"image.{kind}.repository={repository}", "--set", f"image.{kind}.tag={tag}"]
    return [
        *values,
        "--set",
        f"storage.sessions.claimName={SESSIONS_CLAIM}",
        "--set",
        f"storage.database.claimName={DATABASE_CLAIM}",
        "--set",
        f"processors.{PROCESSOR}.enabled=true",
        "--set",
        f"dashboard.port={demo.dashboard_port}",
    ]


def install_chart(demo: Demo) -> None:
    """``helm upgrade --install`` the chart; its operator watches the demo's namespace only, so it
    leaves alone whatever else runs on the cluster."""
    command = [
        str(demo.helm),
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "--kubeconfig",
        str(demo.kubeconfig),
        "-n",
        demo.namespace,
        *helm_values(demo),
        "--set",
        f"operator.watchNamespaces={{{demo.namespace}}}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"helm upgrade --install failed:\n{result.stderr}")


def sessionprocessor(demo: Demo) -> dict[str, Any] | None:
    found = demo.cluster.kubectl(
        "get", "sproc", PROCESSOR, "-o", "json", "--ignore-not-found", namespace=demo.namespace
    ).stdout.strip()
    return json.loads(found) if found else None


def last_run(demo: Demo) -> dict[str, Any]:
    body = sessionprocessor(demo) or {}
    return dict((body.get("status") or {}).get("lastRun") or {})


def run_now(demo: Demo, timeout: float = 600) -> RunResult:
    """Ask for a run of ``usage`` now (the run-now annotation), and wait until it has been reported.

    The operator must have made the processor's CronJob first (it reconciles the chart's
    SessionProcessor once its pod runs); a run that ends is the one whose Job differs from the
    last run before the request.
    """
    started = time.monotonic()

    def cronjob() -> str:
        return demo.cluster.kubectl("get", "cronjob", PROCESSOR, "--ignore-not-found", namespace=demo.namespace).stdout

    wait_for(cronjob, timeout, f"the operator to make the CronJob of {PROCESSOR}", interval=1)
    before = last_run(demo).get("job")
    token = f"demo-{int(time.time())}"
    demo.cluster.kubectl("annotate", "sproc", PROCESSOR, f"{RUN_NOW}={token}", "--overwrite", namespace=demo.namespace)

    def reported() -> dict[str, Any] | None:
        run = last_run(demo)
        return run if run.get("job") and run.get("job") != before and run.get("outcome") else None

    remaining = max(timeout - (time.monotonic() - started), 1)
    run = wait_for(reported, remaining, f"the run-now of {PROCESSOR} to be reported", interval=1)
    return RunResult(job=str(run["job"]), last_run=run, seconds=time.monotonic() - started)


def dashboard_usage(demo: Demo, timeout: float = 120) -> dict[str, Any]:
    """The dashboard's ``/api/usage`` once it answers with the run's snapshot (the dashboard pod
    starts with the chart and shows a snapshot once a run has published one)."""

    def answer() -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{demo.dashboard_url}/api/usage?by=month", timeout=5) as response:
                body: dict[str, Any] = json.load(response)
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return body

    return wait_for(answer, timeout, f"the dashboard at {demo.dashboard_url}", interval=1)


def next_steps(demo: Demo, result: RunResult) -> str:
    """What to type next, for the person who ran the demo."""
    ns = demo.namespace
    commands = [
        (f"kubectl get sproc -n {ns}", "the processors: last outcome, progress"),
        (f"kubectl describe sproc {PROCESSOR} -n {ns}", "conditions and run events"),
        (f'kubectl annotate sproc {PROCESSOR} -n {ns} {RUN_NOW}="$(date +%s)" --overwrite', "run again"),
        (f"kubectl get pv,pvc -n {ns}", f"the demo's volumes, folders in {demo.directory}"),
        (f".venv/bin/sessionpipe report {PROCESSOR} --db {demo.database / 'sessionpipe.duckdb'}", "the report"),
        ("make cluster-down", "stop the control plane"),
    ]
    width = max(len(command) for command, _ in commands)
    return "\n".join(
        [
            f"usage ran in Job {result.job}: {result.last_run.get('outcome')}, "
            f"{result.last_run.get('processed', 0)} files processed ({result.seconds:.0f} s).",
            "",
            "Next:",
            f"  export KUBECONFIG={demo.kubeconfig} PATH={demo.helm.parent}:$PATH",
            *(f"  {command.ljust(width)}  # {what}" for command, what in commands),
            f"  open {demo.dashboard_url}  # the dashboard (here pods share this machine's network; in a real "
            "cluster: kubectl port-forward svc/<release>-sessionpipe-dashboard 8000)",
        ]
    )


def run(demo: Demo, timeout: float = 600) -> RunResult:
    """The demo's steps after the control plane is up and the images are built; returns the run."""
    demo.directory.mkdir(parents=True, exist_ok=True)
    generate_corpus(demo)
    prepare_volumes(demo)
    install_chart(demo)
    result = run_now(demo, timeout)
    dashboard_usage(demo)
    return result
