"""Two processors, one database file, started together: the Lease makes them take turns.

End to end on the real control plane: the operator renders both CronJobs with the same Lease
(derived from the database claim and path), run-now starts both Jobs at once, the executor runs the
real runner in each pod with in-cluster credentials, and the database shows one writer at a time.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import duckdb
import pytest

from sessionpipe_contract import ANNOTATION_RUN_NOW, LABEL_INSTANCE
from sessionpipe_kubetest.cluster import ControlPlane
from sessionpipe_kubetest.volumes import bind_directory
from sessionpipe_kubetest.waiting import wait_for
from tests.anthropic_replay import ReplayServer, tool_reply
from tests.cluster.operator_support import (
    CORPUS,
    OperatorProcess,
    install_crd,
    job_finished,
    prepare_namespace,
    sessionprocessor,
)

pytestmark = pytest.mark.cluster

NEVER = "0 0 1 1 *"


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


#: Opened once the usage run says it is waiting for the Lease: until then the verification run's
#: LLM calls do not return, so it holds the Lease however slowly the usage pod starts (a fixed
#: delay here raced a busy machine).
usage_is_waiting = threading.Event()


def _answer_once_usage_waits(body: dict[str, Any]) -> Any:
    usage_is_waiting.wait(100)  # under the processor's 120 s request timeout
    return tool_reply([])


def test_usage_and_verification_on_one_database_both_complete_one_after_the_other(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    database_dir = tmp_path / "warehouse"
    database_dir.mkdir()
    database_dir.chmod(0o777)  # the job image's user (10001) writes the database
    install_crd(control_plane)
    prepare_namespace(control_plane, namespace)
    bind_directory(control_plane, namespace, "transcripts", CORPUS, read_only=True)
    bind_directory(control_plane, namespace, "warehouse", database_dir)
    control_plane.kubectl(
        "create", "secret", "generic", "anthropic", "--from-literal=key=sk-ant-test-key", namespace=namespace
    )
    usage_is_waiting.clear()
    server = ReplayServer(responder=_answer_once_usage_waits)
    operator = OperatorProcess(control_plane, tmp_path / "operator")
    operator.start()
    try:
        with server.running():
            common = {
                "schedule": NEVER,
                "sessions": {"claimName": "transcripts", "subPath": "sniffly"},
                "database": {"claimName": "warehouse", "path": "shared.duckdb", "leaseWaitSeconds": 120},
            }
            usage = sessionprocessor("usage", {**common, "processor": "usage"})
            verification = sessionprocessor(
                "verification",
                {
                    **common,
                    "processor": "verification",
                    "llm": {"model": "claude-sonnet-4-6", "apiKeySecretRef": {"name": "anthropic", "key": "key"}},
                    "config": {"base_url": server.url},
                },
            )
            manifests = {"apiVersion": "v1", "kind": "List", "items": [usage, verification]}
            control_plane.kubectl("apply", "-f", "-", namespace=namespace, input=json.dumps(manifests))

            def cronjobs() -> bool:
                found = json.loads(control_plane.kubectl("get", "cronjobs", "-o", "json", namespace=namespace).stdout)
                return {item["metadata"]["name"] for item in found["items"]} == {"usage", "verification"}

            wait_for(cronjobs, 60, "both CronJobs")
            # The slow LLM processor first; once it holds the database Lease, usage is started and
            # must wait for it.
            control_plane.kubectl(
                "annotate", "sproc", "verification", f"{ANNOTATION_RUN_NOW}=together", namespace=namespace
            )

            def verification_holds_the_lease() -> bool:
                found = json.loads(control_plane.kubectl("get", "leases", "-o", "json", namespace=namespace).stdout)
                holders = [(item["spec"].get("holderIdentity") or "") for item in found["items"]]
                return any(holder.startswith("verification-") for holder in holders)

            wait_for(verification_holds_the_lease, 60, "the verification run to hold the database Lease")
            control_plane.kubectl("annotate", "sproc", "usage", f"{ANNOTATION_RUN_NOW}=together", namespace=namespace)

            def usage_says_it_waits() -> bool:
                return any(
                    run.name.startswith("usage-") and "is held by verification-" in _text(run.log_path)
                    for run in control_plane.executor.processes()
                    if run.namespace == namespace
                )

            wait_for(usage_says_it_waits, 90, "the usage run to wait for the Lease", interval=0.3)
            usage_is_waiting.set()

            def both_finished() -> list[dict[str, Any]] | None:
                found = json.loads(control_plane.kubectl("get", "jobs", "-o", "json", namespace=namespace).stdout)
                jobs = found["items"]
                done = [job for job in jobs if job_finished(job)]
                return jobs if len(jobs) == 2 and len(done) == 2 else None

            jobs = wait_for(both_finished, 180, "both run-now Jobs to finish", interval=0.5)

            def llm_counters() -> tuple[float, float] | None:
                labels = {"sessionprocessor": "verification"}
                calls = operator.metric_sum("sessionpipe_run_counters_total", counter="llm_calls", **labels)
                tokens = operator.metric_sum("sessionpipe_run_counters_total", counter="llm_tokens", **labels)
                return (calls, tokens) if calls else None

            # the operator reads what the run spent from its termination message into its metrics
            llm_calls, llm_tokens = wait_for(llm_counters, 30, "the verification run's counters in the metrics")
    finally:
        operator.stop()

    for job in jobs:
        name = job["metadata"]["labels"][LABEL_INSTANCE]
        assert (job["status"].get("succeeded") or 0) == 1, f"{name} did not succeed: {job['status']}"
    con = duckdb.connect(str(database_dir / "shared.duckdb"), read_only=True)
    try:
        runs = con.execute(
            "SELECT r.processor, r.outcome, r.started_at, e.acquired_at, r.finished_at, e.holder "
            "FROM processor_runs r JOIN writer_epochs e ON e.epoch = r.writer_epoch ORDER BY e.epoch"
        ).fetchall()
        usage_rows = con.execute("SELECT count(*) FROM usage_rows").fetchone()
        evidence_sessions = con.execute(
            "SELECT count(*) FROM session_processor_state WHERE processor = 'verification' AND status = 'done'"
        ).fetchone()
    finally:
        con.close()
    assert sorted(run[0] for run in runs) == ["usage", "verification"]
    assert {run[1] for run in runs} == {"succeeded"}
    (first, _, _, _, first_finished, first_holder), (second, _, second_started, second_acquired, _, second_holder) = (
        runs
    )
    assert (first, second) == ("verification", "usage")
    assert first_finished <= second_acquired, "the two writers overlapped"
    assert second_started < first_finished, "the second run never had to wait: the test proved nothing"
    assert first_holder != second_holder and all(holder.startswith(("usage-", "verification-")) for *_, holder in runs)
    assert usage_rows is not None and usage_rows[0] > 0
    assert evidence_sessions is not None and evidence_sessions[0] > 0
    assert len(server.requests) >= 1
    assert llm_calls == len(server.requests) and llm_tokens > 0
