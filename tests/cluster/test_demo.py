"""``make demo-cluster`` (``python -m sessionpipe_kubetest demo``): its flow on the session's control plane.

The flow the command runs after ``up`` and ``make images``: a generated corpus and a database folder
as PersistentVolumes, the chart with the local images, a run-now of ``usage``, what to type next.
Here in the test's own namespace and folder, twice, because re-running must work.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sessionpipe_kubetest import demo, images
from sessionpipe_kubetest.cluster import ControlPlane, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.images, pytest.mark.helm]


def test_the_demo_installs_the_chart_on_a_demo_corpus_and_a_usage_run_succeeds_twice(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    images.build_all()
    the_demo = demo.Demo(
        cluster=control_plane,
        kubeconfig=control_plane.kubeconfig,
        helm=control_plane.bin_dir / "helm",
        directory=tmp_path / "demo",
        namespace=namespace,
        megabytes=1,
        dashboard_port=free_port(),  # pods share the host's network here
    )
    try:
        first = demo.run(the_demo)
        assert first.succeeded, first.last_run
        assert first.last_run["processed"] > 0
        assert (the_demo.database / "sessionpipe.duckdb").stat().st_uid == demo.JOB_IMAGE_UID  # the image's user
        # Again: the corpus, the volumes and the release are reused, and one more run succeeds.
        second = demo.run(the_demo)
        assert second.succeeded and second.job != first.job, second.last_run

        listed = control_plane.kubectl("get", "sproc", namespace=namespace).stdout
        assert "usage" in listed and "succeeded" in listed, listed
        status = json.loads(control_plane.kubectl("get", "sproc", "usage", "-o", "json", namespace=namespace).stdout)
        assert status["status"]["lastRun"]["job"] == second.job
        claims = json.loads(control_plane.kubectl("get", "pvc", "-o", "json", namespace=namespace).stdout)["items"]
        assert {c["metadata"]["name"]: c["status"]["phase"] for c in claims} == {
            demo.SESSIONS_CLAIM: "Bound",
            demo.DATABASE_CLAIM: "Bound",
        }
        # The dashboard the chart installs answers on the port the steps print, with the run's totals.
        shown = demo.dashboard_usage(the_demo)
        assert shown["totals"]["totalTokens"] > 0, shown
        steps = demo.next_steps(the_demo, second)
        assert f"open {the_demo.dashboard_url}" in steps
        for command in (f"kubectl get sproc -n {namespace}", f"kubectl describe sproc usage -n {namespace}"):
            assert command in steps
    finally:
        subprocess.run(
            [str(the_demo.helm), "uninstall", demo.RELEASE, "-n", namespace, "--kubeconfig", str(the_demo.kubeconfig)],
            capture_output=True,
            check=False,
            timeout=300,
        )
