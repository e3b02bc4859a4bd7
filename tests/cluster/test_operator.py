"""The operator on the real control plane: SessionProcessor -> CronJob -> Job -> pod -> runner -> status.

One ``sessionpipe-operator`` process serves the whole module (restarted in place by the restart
test); every test has its own namespace. Job pods run through the test pod executor, which runs
the real ``sessionpipe run`` command of the rendered pod, with claims bound to PersistentVolumes of
host folders (``sessionpipe_kubetest.volumes.bind_directory``). A pod whose claim is missing or
unbound stays Pending and unscheduled, which is how these tests hold a Job active for as long as
they need.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from sessionpipe_contract import (
    ANNOTATION_RUN_NOW,
    ANNOTATION_RUN_NOW_TOKEN,
    API_GROUP,
    API_VERSION,
    EXIT_LEASE_NOT_ACQUIRED,
    KIND,
    LABEL_INSTANCE,
)
from sessionpipe_kubetest.cluster import ControlPlane
from sessionpipe_kubetest.volumes import bind_directory
from sessionpipe_kubetest.waiting import wait_for
from sessionpipe_operator import render
from sessionpipe_operator.k8s import KubeClient, cronjob_path, job_path, sessionprocessor_path
from sessionpipe_operator.models import CONFIG_MAX_BYTES, SessionProcessorSpec
from sessionpipe_operator.settings import OperatorSettings
from tests.anthropic_replay import ReplayServer, tool_reply
from tests.cluster.operator_support import (
    CONVERGE_SECONDS,
    CORPUS,
    JOB_IMAGE,
    JobWatcher,
    OperatorProcess,
    install_crd,
    prepare_namespace,
    sessionprocessor,
)
from tests.support.kubectl import apply

pytestmark = pytest.mark.cluster

NEVER = "0 0 1 1 *"  # once a year: these tests start runs through run-now, not the clock
SNIFFLY = CORPUS / "sniffly"


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_crd(control_plane)
    process = OperatorProcess(control_plane, tmp_path_factory.mktemp("operator"))
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(f"\n[operator] log: {process.log_path}")


@pytest.fixture
def kube(k8s_api: Any) -> KubeClient:
    return KubeClient(k8s_api)


@pytest.fixture
def database_dir(tmp_path: Path) -> Path:
    """A host folder for the database claim (the executor stages mount sources, so /tmp is fine)."""
    folder = tmp_path / "warehouse"
    folder.mkdir()
    folder.chmod(0o777)  # the job image's user (10001) writes the database
    return folder


@pytest.fixture
def ns(control_plane: ControlPlane, namespace: str, operator: OperatorProcess) -> str:
    prepare_namespace(control_plane, namespace)
    return namespace


# --- helpers ---------------------------------------------------------------------------------------
def merge_patch_cr(control_plane: ControlPlane, namespace: str, name: str, patch: dict[str, Any]) -> None:
    control_plane.kubectl(
        "patch", "sessionprocessor", name, "--type=merge", "-p", json.dumps(patch), namespace=namespace
    )


def annotate_run_now(control_plane: ControlPlane, namespace: str, name: str, token: str) -> None:
    control_plane.kubectl(
        "annotate", "sessionprocessor", name, f"{ANNOTATION_RUN_NOW}={token}", "--overwrite", namespace=namespace
    )


def cr(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    body = kube.get(sessionprocessor_path(namespace, name))
    assert body is not None, f"SessionProcessor {namespace}/{name} is gone"
    return body


def jobs_of(kube: KubeClient, namespace: str, name: str) -> list[dict[str, Any]]:
    return kube.list(job_path(namespace), label_selector=f"{LABEL_INSTANCE}={name}")


def events(kube: KubeClient, namespace: str, name: str, reason: str | None = None) -> list[dict[str, Any]]:
    found = [
        event
        for event in kube.list(f"/api/v1/namespaces/{namespace}/events")
        if event.get("involvedObject", {}).get("name") == name and (reason is None or event.get("reason") == reason)
    ]
    return sorted(found, key=lambda event: event["metadata"]["creationTimestamp"])


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def condition_true(status: dict[str, Any], kind: str) -> bool:
    found = condition(status, kind)
    return bool(found and found.get("status") == "True")


def assert_subset(expected: Any, actual: Any, path: str = "") -> None:
    """Every field of ``expected`` has the same value in ``actual``; the API server may add defaults."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, found {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{path}.{key}: missing from the CronJob"
            assert_subset(value, actual[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for index, (want, have) in enumerate(zip(expected, actual, strict=True)):
            assert_subset(want, have, f"{path}[{index}]")
    else:
        assert expected == actual, f"{path}: {actual!r} != {expected!r}"


def rendered_for(body: dict[str, Any], operator: OperatorProcess) -> dict[str, Any]:
    """What render.build_cronjob makes of the CR as the API server stores it (defaults applied)."""
    owner = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
    }
    return render.build_cronjob(
        body["metadata"]["name"],
        body["metadata"]["namespace"],
        owner,
        SessionProcessorSpec.model_validate(body["spec"]),
        OperatorSettings.from_env(operator.env()),
    )


def usage_spec(sessions_claim: str = "transcripts", database_claim: str = "warehouse", **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "processor": "usage",
        "schedule": NEVER,
        "sessions": {"claimName": sessions_claim, "subPath": "sniffly"},
        "database": {"claimName": database_claim, "path": "usage.duckdb"},
        "run": {"timeoutSeconds": 600},
    }
    spec.update(extra)
    return spec


def wait_for_run(kube: KubeClient, namespace: str, name: str, job_name: str, timeout: float = 90) -> dict[str, Any]:
    """The CR status once it records ``job_name`` as its last run."""

    def recorded() -> dict[str, Any] | None:
        status = cr(kube, namespace, name).get("status") or {}
        return status if (status.get("lastRun") or {}).get("job") == job_name else None

    return wait_for(recorded, timeout, f"{namespace}/{name} to record Job {job_name}", interval=0.3)


def start_run_now(control_plane: ControlPlane, kube: KubeClient, namespace: str, name: str, token: str) -> str:
    """Annotate, then return the name of the Job that serves ``token``."""
    annotate_run_now(control_plane, namespace, name, token)

    def served() -> str | None:
        for job in jobs_of(kube, namespace, name):
            if (job["metadata"].get("annotations") or {}).get(ANNOTATION_RUN_NOW_TOKEN) == token:
                return str(job["metadata"]["name"])
        return None

    return wait_for(served, CONVERGE_SECONDS, f"a Job serving run-now token {token}")


def session_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jsonl"))


# --- 1. the CronJob ---------------------------------------------------------------------------------
def usage_with_cronjob(control_plane: ControlPlane, ns: str, kube: KubeClient) -> dict[str, Any]:
    """Apply the processor ``usage``; its CronJob once the operator made it."""
    apply(control_plane, ns, sessionprocessor("usage", usage_spec()))
    return wait_for(lambda: kube.get(cronjob_path(ns, "usage")), CONVERGE_SECONDS, "the CronJob")


def test_cronjob_has_the_rendered_shape_follows_changes_and_is_put_back(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess
) -> None:
    """The rendered shape; following changes and being put back are the three tests after this one."""
    started = time.monotonic()
    cronjob = usage_with_cronjob(control_plane, ns, kube)
    print(f"\nCronJob appeared {time.monotonic() - started:.2f}s after kubectl apply")
    body = cr(kube, ns, "usage")
    assert not body["metadata"].get("finalizers"), "the SessionProcessor must carry no finalizer"

    # The shape docs/architecture.md ("The rendered CronJob") documents, checked field by field...
    assert cronjob["spec"]["schedule"] == NEVER
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cronjob["spec"]["startingDeadlineSeconds"] == 300
    assert cronjob["spec"]["successfulJobsHistoryLimit"] == 3
    assert cronjob["spec"]["failedJobsHistoryLimit"] == 3
    owner = cronjob["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"], o["uid"], o.get("controller")) for o in owner] == [
        (KIND, "usage", body["metadata"]["uid"], True)
    ]
    job_spec = cronjob["spec"]["jobTemplate"]["spec"]
    assert job_spec["activeDeadlineSeconds"] == 600
    assert job_spec["podReplacementPolicy"] == "Failed"
    rules = job_spec["podFailurePolicy"]["rules"]
    assert any(
        rule["action"] == "FailJob" and EXIT_LEASE_NOT_ACQUIRED in rule.get("onExitCodes", {}).get("values", [])
        for rule in rules
    )
    assert any(rule["action"] == "Ignore" and rule.get("onPodConditions") for rule in rules)
    pod = job_spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["containers"][0]["image"] == JOB_IMAGE
    # ...and exactly what the pure renderer makes of the stored spec.
    assert_subset(rendered_for(body, operator)["spec"], cronjob["spec"], "spec")


def test_cronjob_follows_changes_of_schedule_suspend_image_and_history(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess
) -> None:
    usage_with_cronjob(control_plane, ns, kube)
    merge_patch_cr(
        control_plane,
        ns,
        "usage",
        {
            "spec": {
                "schedule": "*/30 * * * *",
                "suspend": True,
                "image": "registry.example/sessionpipe-job:2",
                "history": {"successful": 1, "failed": 5},
            }
        },
    )

    def updated() -> dict[str, Any] | None:
        current = kube.get(cronjob_path(ns, "usage"))
        if current is None:
            return None
        spec = current["spec"]
        image = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"]
        wanted = (spec["schedule"], spec.get("suspend"), image, spec["successfulJobsHistoryLimit"])
        return current if wanted == ("*/30 * * * *", True, "registry.example/sessionpipe-job:2", 1) else None

    cronjob = wait_for(updated, CONVERGE_SECONDS, "the CronJob to follow schedule, suspend, image and history")
    assert cronjob["spec"]["failedJobsHistoryLimit"] == 5
    assert_subset(rendered_for(cr(kube, ns, "usage"), operator)["spec"], cronjob["spec"], "spec")


def test_a_hand_edited_cronjob_is_put_back(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess
) -> None:
    usage_with_cronjob(control_plane, ns, kube)
    control_plane.kubectl(
        "patch",
        "cronjob",
        "usage",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"schedule": "* * * * *", "concurrencyPolicy": "Allow", "suspend": True}}),
        namespace=ns,
    )

    def repaired() -> bool:
        spec = kube.get(cronjob_path(ns, "usage"))["spec"]  # type: ignore[index]
        return (spec["schedule"], spec["concurrencyPolicy"], spec["suspend"]) == (NEVER, "Forbid", False)

    wait_for(repaired, CONVERGE_SECONDS, "the edited CronJob to be put back")
    wait_for(lambda: events(kube, ns, "usage", "CronJobRepaired"), CONVERGE_SECONDS, "a CronJobRepaired Event")


def test_a_deleted_cronjob_is_put_back(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess
) -> None:
    old_uid = usage_with_cronjob(control_plane, ns, kube)["metadata"]["uid"]
    control_plane.kubectl("delete", "cronjob", "usage", "--wait=true", namespace=ns)

    def recreated() -> dict[str, Any] | None:
        current = kube.get(cronjob_path(ns, "usage"))
        return current if current and current["metadata"]["uid"] != old_uid else None

    cronjob = wait_for(recreated, CONVERGE_SECONDS, "the deleted CronJob to be recreated")
    assert_subset(rendered_for(cr(kube, ns, "usage"), operator)["spec"], cronjob["spec"], "spec")
    wait_for(lambda: events(kube, ns, "usage", "CronJobRestored"), CONVERGE_SECONDS, "a CronJobRestored Event")


# --- 2. end to end ------------------------------------------------------------------------------------
def test_usage_run_now_end_to_end_fills_the_database_and_the_status(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess, database_dir: Path
) -> None:
    bind_directory(control_plane, ns, "transcripts", CORPUS, read_only=True)
    bind_directory(control_plane, ns, "warehouse", database_dir)
    apply(control_plane, ns, sessionprocessor("usage", usage_spec()))
    wait_for(lambda: kube.get(cronjob_path(ns, "usage")), CONVERGE_SECONDS, "the CronJob")

    requested = subprocess.run(
        [str(Path(sys.executable).with_name("sessionpipe")), "run-now", "usage", "-n", ns],
        env=control_plane.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert requested.returncode == 0, requested.stderr
    token = cr(kube, ns, "usage")["metadata"]["annotations"][ANNOTATION_RUN_NOW]
    assert token in requested.stdout

    job = wait_for(lambda: jobs_of(kube, ns, "usage"), CONVERGE_SECONDS, "the run-now Job")[0]
    assert job["metadata"]["annotations"][ANNOTATION_RUN_NOW_TOKEN] == token
    status = wait_for_run(kube, ns, "usage", job["metadata"]["name"])
    log = control_plane.executor.log_path(ns, _pod_of(kube, ns, job["metadata"]["name"]))
    last = status["lastRun"]
    expected_files = session_files(SNIFFLY)
    assert last["outcome"] == "succeeded", f"pod output:\n{log.read_text()}"
    assert last["processed"] == len(expected_files)
    assert last["errors"] == 0
    assert status.get("lastSuccessfulTime")
    assert condition_true(status, "Ready")
    assert not condition_true(status, "Degraded")
    # The Job ran in the real job image, as its user (JOB_IMAGE is the local tag).
    assert (database_dir / "usage.duckdb").stat().st_uid == 10001

    con = duckdb.connect(str(database_dir / "usage.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT count(*) FROM usage_rows").fetchone()
        sessions = con.execute(
            "SELECT session_file, status FROM session_processor_state WHERE processor = 'usage' ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    assert rows is not None and rows[0] > 0
    assert rows[0] == last["items"], "the CR's item count is the rows the run wrote"
    expected_keys = sorted(str(path.relative_to(SNIFFLY)) for path in expected_files)
    assert [key for key, _ in sessions] == expected_keys  # first component: the user folder
    assert {state for _, state in sessions} == {"done"}
    # kopf posts Events from a queue of its own, after the status it patched: wait for it.
    wait_for(lambda: events(kube, ns, "usage", "RunSucceeded"), CONVERGE_SECONDS, "a RunSucceeded Event")

    # the CronJob's finished Job leaves its active list, and the mirror follows with a count
    wait_for(
        lambda: cr(kube, ns, "usage")["status"].get("activeCount") == 0, CONVERGE_SECONDS, "activeCount 0 after the run"
    )
    listing = control_plane.kubectl("get", "sessionprocessors", "-o", "wide", namespace=ns).stdout
    described = control_plane.kubectl("describe", "sessionprocessor", "usage", namespace=ns).stdout
    print(
        f"\n$ kubectl get sessionprocessors -o wide\n{listing}\n$ kubectl describe sessionprocessor usage\n{described}"
    )
    assert "usage" in listing and "succeeded" in listing
    header, row = listing.splitlines()[:2]
    assert row[header.index("ACTIVE") :].split()[0] == "0"  # a count, as for CronJobs
    assert "RunSucceeded" in described and "Ready" in described


def _pod_of(kube: KubeClient, namespace: str, job_name: str) -> str:
    pods = kube.list(f"/api/v1/namespaces/{namespace}/pods", label_selector=f"batch.kubernetes.io/job-name={job_name}")
    assert pods, f"no pod for Job {job_name}"
    return str(pods[0]["metadata"]["name"])


# --- 2b. progress while a run goes on ------------------------------------------------------------------
def _column(listing: str, name: str) -> str:
    """The cell of column ``name`` in the first row of a ``kubectl get`` table ("" when empty).

    Cells are cut at the header's column starts: values may hold spaces (a cron) or be blank.
    """
    header, row = listing.splitlines()[:2]
    start = header.index(name)
    following = re.search(r"\s{2,}\S", header[start + len(name) :])
    end = start + len(name) + following.end() - 1 if following else len(row)
    return row[start:end].strip()


def test_a_running_job_shows_its_progress_and_the_effective_schedule_in_kubectl_get(
    control_plane: ControlPlane, ns: str, kube: KubeClient, database_dir: Path
) -> None:
    """A slowed run (its LLM calls after the first wait for the test) shows PROGRESS; the end clears it."""
    progress_seen = threading.Event()
    calls = itertools.count()

    def answer(_: dict[str, Any]) -> Any:
        if next(calls) >= 1:
            progress_seen.wait(100)  # under the processor's 120 s request timeout
        return tool_reply([])

    bind_directory(control_plane, ns, "transcripts", CORPUS, read_only=True)
    bind_directory(control_plane, ns, "warehouse", database_dir)
    control_plane.kubectl(
        "create", "secret", "generic", "anthropic", "--from-literal=key=sk-ant-test-key", namespace=ns
    )
    server = ReplayServer(responder=answer)
    with server.running():
        spec = usage_spec(
            processor="verification",
            schedule="@yearly",  # spelled out in the SCHEDULE column
            llm={"model": "claude-sonnet-4-6", "apiKeySecretRef": {"name": "anthropic", "key": "key"}},
            config={"base_url": server.url},
        )
        apply(control_plane, ns, sessionprocessor("slow", spec))
        wait_for(lambda: kube.get(cronjob_path(ns, "slow")), CONVERGE_SECONDS, "the CronJob")
        job_name = start_run_now(control_plane, kube, ns, "slow", "watched")
        try:
            status = wait_for(
                lambda: (cr(kube, ns, "slow").get("status") or {}).get("progress") and cr(kube, ns, "slow")["status"],
                90,
                "PROGRESS of the running Job",
                interval=0.5,
            )
            listing = control_plane.kubectl("get", "sproc", namespace=ns).stdout
            wide = control_plane.kubectl("get", "sproc", "-o", "wide", namespace=ns).stdout
        finally:
            progress_seen.set()
        print(f"\n$ kubectl get sproc   (while the run goes on)\n{listing}\n$ kubectl get sproc -o wide\n{wide}")
        done, total = (int(part.replace(",", "")) for part in status["progress"].split("/"))
        assert total == len(session_files(SNIFFLY)) and 0 <= done < total
        assert _column(listing, "PROGRESS") == status["progress"]
        assert _column(listing, "SCHEDULE") == "0 0 1 1 *"  # the cron @yearly means
        assert cr(kube, ns, "slow")["spec"]["schedule"] == "@yearly"  # what the user wrote stays
        assert _column(wide, "JOBS") == job_name  # a name, not a JSON array

        finished = wait_for_run(kube, ns, "slow", job_name, timeout=180)
    assert finished["lastRun"]["outcome"] == "succeeded", finished["lastRun"]
    wait_for(lambda: "progress" not in (cr(kube, ns, "slow").get("status") or {}), CONVERGE_SECONDS, "PROGRESS cleared")
    after = control_plane.kubectl("get", "sproc", namespace=ns).stdout
    print(f"\n$ kubectl get sproc   (after the run)\n{after}")
    assert _column(after, "PROGRESS") == ""


# --- 3. never two Jobs at once ---------------------------------------------------------------------
def test_run_now_and_schedule_never_start_a_second_job_beside_an_active_one(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess, k8s_api: Any, database_dir: Path
) -> None:
    bind_directory(control_plane, ns, "warehouse", database_dir)
    # Every minute; the sessions claim is not bound yet, so the first Job's pod waits and stays active.
    with JobWatcher(k8s_api, ns) as watcher:
        apply(control_plane, ns, sessionprocessor("usage", usage_spec(schedule="* * * * *")))
        first = start_run_now(control_plane, kube, ns, "usage", "first")

        # The real CronJob controller counts the run-now Job as its own active Job.
        def listed() -> bool:
            cronjob = kube.get(cronjob_path(ns, "usage")) or {}
            return first in [ref["name"] for ref in (cronjob.get("status") or {}).get("active") or []]

        wait_for(listed, CONVERGE_SECONDS, "the run-now Job in the CronJob's status.active")

        annotate_run_now(control_plane, ns, "usage", "second")
        skipped = wait_for(lambda: events(kube, ns, "usage", "RunSkipped"), CONVERGE_SECONDS, "a RunSkipped Event")
        assert "second" in skipped[-1]["message"] and first in skipped[-1]["message"]

        # Through the next scheduled tick: the controller refuses to start a Job beside ours.
        wait_for(
            lambda: events(kube, ns, "usage", "JobAlreadyActive"),
            75,
            "the CronJob controller to skip a tick because the run-now Job is active",
            interval=1,
        )
        assert watcher.names("usage") == [first]

        # Let it run; then later ticks start scheduled Jobs again, one at a time.
        bind_directory(control_plane, ns, "transcripts", CORPUS, read_only=True)
        wait_for_run(kube, ns, "usage", first)
        scheduled = wait_for(
            lambda: [n for n in watcher.names("usage") if n != first], 75, "a scheduled Job after the run-now Job"
        )
        wait_for_run(kube, ns, "usage", scheduled[0])
    assert watcher.max_unfinished.get("usage") == 1, f"Jobs overlapped: {watcher.overlaps}"
    assert not watcher.overlaps


# --- 4. what the API server refuses, and what the operator refuses -----------------------------------
VALID: dict[str, Any] = {
    "processor": "usage",
    "schedule": "@daily",
    "sessions": {"claimName": "transcripts"},
    "database": {"claimName": "warehouse"},
}


def _without(*path: str) -> dict[str, Any]:
    spec = json.loads(json.dumps(VALID))
    target = spec
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return spec


def _with(**changes: Any) -> dict[str, Any]:
    spec = json.loads(json.dumps(VALID))
    for dotted, value in changes.items():
        target = spec
        parts = dotted.split("__")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return spec


#: (case, spec, the field the API server's message must name)
MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("no processor", _without("processor"), "spec.processor"),
    ("no schedule", _without("schedule"), "spec.schedule"),
    ("no database", _without("database"), "spec.database"),
    ("no sessions claim", _without("sessions", "claimName"), "spec.sessions.claimName"),
    ("schedule is prose", _with(schedule="every day at noon"), "spec.schedule"),
    ("schedule has three fields", _with(schedule="* * *"), "spec.schedule"),
    ("suspend is a string", _with(suspend="yes"), "spec.suspend"),
    ("unknown field", _with(colour="blue"), "spec.colour"),
    ("negative history", _with(history__successful=-1), "spec.history.successful"),
    ("zero timeout", _with(run__timeoutSeconds=0), "spec.run.timeoutSeconds"),
    ("zero attempts", _with(run__maxAttemptsPerSession=0), "spec.run.maxAttemptsPerSession"),
    ("negative lease wait", _with(database__leaseWaitSeconds=-5), "spec.database.leaseWaitSeconds"),
    ("processor is not a name", _with(processor="Usage Report!"), "spec.processor"),
    ("relative mount path", _with(sessions__mountPath="data/sessions"), "spec.sessions.mountPath"),
    ("model without a key", _with(llm__model="claude-sonnet-4-5"), "spec.llm"),
]


def test_malformed_specs_are_refused_by_the_api_server_naming_the_field(control_plane: ControlPlane, ns: str) -> None:
    refused = []
    for number, (case, spec, field) in enumerate(MALFORMED):
        result = apply_unchecked(control_plane, ns, sessionprocessor(f"bad-{number}", spec))
        message = (result.stderr or result.stdout).strip()
        print(f"\n{case}: {message}")
        assert result.returncode != 0, f"{case}: kubectl apply accepted it"
        assert field in message, f"{case}: the message does not name {field}: {message}"
        refused.append(case)
    assert len(refused) >= 12
    listed = control_plane.kubectl("get", "sessionprocessors", "-o", "name", namespace=ns).stdout
    assert listed.strip() == ""


def apply_unchecked(control_plane: ControlPlane, namespace: str, manifest: dict[str, Any]) -> Any:
    return control_plane.kubectl("apply", "-f", "-", namespace=namespace, input=json.dumps(manifest), check=False)


def test_unworkable_specs_get_invalid_spec_once_and_no_retry_loop(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess
) -> None:
    unworkable = {
        # a shorthand with no exact cron form (7 does not divide 60)
        "odd-interval": _with(schedule="every 7m", database__path="odd.duckdb"),
        # the CronJob API refuses an unknown time zone; the CRD schema cannot know the zone list
        "no-such-zone": _with(timeZone="Mars/Olympus_Mons", database__path="mars.duckdb"),
        # the same processor writing the same database as "first", which is older
        "second-writer": _with(database__path="shared.duckdb"),
    }
    apply(control_plane, ns, sessionprocessor("first", _with(database__path="shared.duckdb")))
    wait_for(lambda: kube.get(cronjob_path(ns, "first")), CONVERGE_SECONDS, "the first writer's CronJob")
    for name, spec in unworkable.items():
        apply(control_plane, ns, sessionprocessor(name, spec))

    def all_invalid() -> bool:
        return all(condition_true(cr(kube, ns, name).get("status") or {}, "InvalidSpec") for name in unworkable)

    wait_for(all_invalid, CONVERGE_SECONDS, "InvalidSpec on every unworkable processor", interval=0.3)
    for name in unworkable:
        message = condition(cr(kube, ns, name)["status"], "InvalidSpec")["message"]  # type: ignore[index]
        print(f"\n{name}: InvalidSpec: {message}")
        assert kube.get(cronjob_path(ns, name)) is None, f"{name} must not get a CronJob"
        # kopf posts Events from a queue, a moment after the status write that the wait above saw.
        posted = wait_for(
            lambda name=name: events(kube, ns, name, "InvalidSpec"),
            CONVERGE_SECONDS,
            f"{name}'s InvalidSpec Event",
        )
        assert len(posted) == 1
    assert "7" in condition(cr(kube, ns, "odd-interval")["status"], "InvalidSpec")["message"]  # type: ignore[index]
    assert "first" in condition(cr(kube, ns, "second-writer")["status"], "InvalidSpec")["message"]  # type: ignore[index]

    # An idle minute: no write to any of them, no new Event, not one operator log line about them.
    wait_for(
        lambda: all(kopf_settled(cr(kube, ns, name)) for name in unworkable),
        CONVERGE_SECONDS,
        "kopf to finish its bookkeeping on every unworkable processor",
        interval=0.3,
    )
    versions = {name: cr(kube, ns, name)["metadata"]["resourceVersion"] for name in unworkable}
    event_count = len(kube.list(f"/api/v1/namespaces/{ns}/events"))
    log_offset = len(operator.log_text())
    requests_before = operator.metric_sum("sessionpipe_operator_api_requests_total")
    time.sleep(60)  # proving that nothing happens takes the time in which it would
    requests = operator.metric_sum("sessionpipe_operator_api_requests_total") - requests_before
    print(f"\noperator client requests (all namespaces) during the idle minute: {requests:.0f}")
    assert {name: cr(kube, ns, name)["metadata"]["resourceVersion"] for name in unworkable} == versions
    assert len(kube.list(f"/api/v1/namespaces/{ns}/events")) == event_count
    assert f"[{ns}/" not in operator.log_text()[log_offset:]


def kopf_settled(body: dict[str, Any]) -> bool:
    """Whether kopf recorded the spec as handled and holds no handler progress on the object any more."""
    annotations = body["metadata"].get("annotations") or {}
    ours = [key for key in annotations if key.startswith("kopf.sessionpipe.io/")]
    return ours == ["kopf.sessionpipe.io/last-handled-configuration"]


def wait_for_invalid_spec(kube: KubeClient, namespace: str, name: str) -> None:
    wait_for(
        lambda: not invalid_spec_cleared(kube, namespace, name),
        CONVERGE_SECONDS,
        f"InvalidSpec on {name}",
        interval=0.3,
    )


def invalid_spec_cleared(kube: KubeClient, namespace: str, name: str) -> bool:
    return not condition_true(cr(kube, namespace, name).get("status") or {}, "InvalidSpec")


def test_a_corrected_spec_is_reconciled_at_once(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess
) -> None:
    apply(control_plane, ns, sessionprocessor("odd-interval", _with(schedule="every 7m")))
    wait_for_invalid_spec(kube, ns, "odd-interval")
    merge_patch_cr(control_plane, ns, "odd-interval", {"spec": {"schedule": "every 5m"}})
    # (The status is patched when the handler returns, a moment after the CronJob is written.)
    fixed = wait_for(
        lambda: kube.get(cronjob_path(ns, "odd-interval")), CONVERGE_SECONDS, "the corrected processor's CronJob"
    )
    assert fixed["spec"]["schedule"] == "*/5 * * * *"
    wait_for(
        lambda: invalid_spec_cleared(kube, ns, "odd-interval"),
        CONVERGE_SECONDS,
        "InvalidSpec cleared on the corrected processor",
    )


def test_the_second_writer_of_a_database_runs_once_the_first_is_deleted(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess
) -> None:
    apply(control_plane, ns, sessionprocessor("first", _with(database__path="shared.duckdb")))
    wait_for(lambda: kube.get(cronjob_path(ns, "first")), CONVERGE_SECONDS, "the first writer's CronJob")
    apply(control_plane, ns, sessionprocessor("second-writer", _with(database__path="shared.duckdb")))
    wait_for_invalid_spec(kube, ns, "second-writer")
    control_plane.kubectl("delete", "sessionprocessor", "first", namespace=ns)
    wait_for(
        lambda: kube.get(cronjob_path(ns, "second-writer")),
        CONVERGE_SECONDS,
        "the second writer's CronJob once it is alone",
    )
    wait_for(
        lambda: invalid_spec_cleared(kube, ns, "second-writer"),
        CONVERGE_SECONDS,
        "InvalidSpec cleared on the second writer",
    )


def test_a_config_too_large_to_carry_is_invalid_spec_with_no_cronjob_and_no_retry_loop(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess
) -> None:
    """The issue's case: about 51 KB of umlauts passes the schema, then would fail every Job (E2BIG)."""
    apply(control_plane, ns, sessionprocessor("big-config", _with(config={"blob": "ü" * 51200})))
    wait_for(
        lambda: condition_true(cr(kube, ns, "big-config").get("status") or {}, "InvalidSpec"),
        15,
        "InvalidSpec on the processor with the oversized config",
        interval=0.3,
    )
    message = condition(cr(kube, ns, "big-config")["status"], "InvalidSpec")["message"]  # type: ignore[index]
    print(f"\nInvalidSpec: {message}")
    assert message.startswith("spec.config:") and f"limit of {CONFIG_MAX_BYTES} bytes" in message
    assert kube.get(cronjob_path(ns, "big-config")) is None
    time.sleep(5)  # kopf cannot store its annotation for this spec: it must not retry in a loop
    assert len(events(kube, ns, "big-config", "InvalidSpec")) == 1
    version = cr(kube, ns, "big-config")["metadata"]["resourceVersion"]
    time.sleep(5)
    assert cr(kube, ns, "big-config")["metadata"]["resourceVersion"] == version

    # Trimmed below the limit, it is reconciled like any other.
    merge_patch_cr(control_plane, ns, "big-config", {"spec": {"config": {"blob": "ü" * 5000}}})
    wait_for(lambda: kube.get(cronjob_path(ns, "big-config")), 10, "the CronJob once the config fits")
    wait_for(
        lambda: not condition_true(cr(kube, ns, "big-config").get("status") or {}, "InvalidSpec"),
        10,
        "InvalidSpec cleared",
    )


# --- 5. failure and recovery ---------------------------------------------------------------------------
def test_failed_run_sets_degraded_and_the_next_success_clears_it(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess, database_dir: Path
) -> None:
    garbage = database_dir / "usage.duckdb"
    garbage.write_bytes(b"this is not a DuckDB database\n" * 100)
    bind_directory(control_plane, ns, "transcripts", CORPUS, read_only=True)
    bind_directory(control_plane, ns, "warehouse", database_dir)
    apply(control_plane, ns, sessionprocessor("usage", usage_spec()))

    failed_job = start_run_now(control_plane, kube, ns, "usage", "doomed")
    status = wait_for_run(kube, ns, "usage", failed_job)
    job = kube.get(job_path(ns, failed_job))
    assert job is not None and any(c["type"] == "Failed" and c["status"] == "True" for c in job["status"]["conditions"])
    assert status["lastRun"]["outcome"] == "failed"
    assert status.get("lastFailureTime")
    assert status.get("consecutiveFailures") == 1
    assert condition_true(status, "Degraded")
    wait_for(lambda: events(kube, ns, "usage", "RunFailed"), CONVERGE_SECONDS, "a RunFailed Event")

    garbage.unlink()
    good_job = start_run_now(control_plane, kube, ns, "usage", "healed")
    status = wait_for_run(kube, ns, "usage", good_job)
    assert status["lastRun"]["outcome"] == "succeeded"
    assert status.get("consecutiveFailures", 0) == 0
    assert not condition_true(status, "Degraded")
    assert status.get("lastSuccessfulTime")
    wait_for(lambda: events(kube, ns, "usage", "RunSucceeded"), CONVERGE_SECONDS, "a RunSucceeded Event")


def test_prices_from_a_configmap_price_a_model_the_job_image_does_not_know(
    control_plane: ControlPlane,
    ns: str,
    kube: KubeClient,
    operator: OperatorProcess,
    database_dir: Path,
    tmp_path: Path,
) -> None:
    real, made_up = "claude-sonnet-4-20250514", "claude-nova-7-20270401"
    transcript = SNIFFLY / "projects/-Users-chip-dev-ai-music/ba79134d-b6e9-4867-af0c-6941038c9e4b.jsonl"
    sessions = tmp_path / "sessions"
    (sessions / "chip" / "-Users-chip-dev-new").mkdir(parents=True)
    (sessions / "chip" / "-Users-chip-dev-new" / "s1.jsonl").write_bytes(
        transcript.read_bytes().replace(real.encode(), made_up.encode())
    )
    litellm = tmp_path / "model_prices_and_context_window.json"
    litellm.write_text(json.dumps({made_up: {"input_cost_per_token": 7e-06, "output_cost_per_token": 3.5e-05}}))
    prices = tmp_path / "pricing.json"
    imported = subprocess.run(
        [str(Path(sys.executable).with_name("sessionpipe")), "pricing", "import", str(litellm), "-o", str(prices)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    control_plane.kubectl("create", "configmap", "model-prices", f"--from-file=pricing.json={prices}", namespace=ns)
    bind_directory(control_plane, ns, "transcripts", sessions, read_only=True)
    bind_directory(control_plane, ns, "warehouse", database_dir)
    spec = usage_spec(pricing={"configMapRef": {"name": "model-prices"}})
    spec["sessions"] = {"claimName": "transcripts"}
    apply(control_plane, ns, sessionprocessor("usage", spec))

    job = start_run_now(control_plane, kube, ns, "usage", "priced")
    status = wait_for_run(kube, ns, "usage", job)
    log = control_plane.executor.log_path(ns, _pod_of(kube, ns, job))
    assert status["lastRun"]["outcome"] == "succeeded", f"pod output:\n{log.read_text()}"
    assert "missing_price" not in (status["lastRun"].get("message") or "")
    con = duckdb.connect(str(database_dir / "usage.duckdb"), read_only=True)
    try:
        found = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE cost_source = 'unpriced'), sum(cost_usd), "
            "sum(input_tokens * 7e-06 + output_tokens * 3.5e-05 + cache_write_5m_tokens * 8.75e-06 "
            "+ cache_write_1h_tokens * 1.4e-05 + cache_read_tokens * 7e-07), any_value(pricing_version) "
            "FROM usage_rows WHERE model = ?",
            [made_up],
        ).fetchone()
    finally:
        con.close()
    assert found is not None
    rows, unpriced, cost, expected, version = found
    assert rows > 0 and unpriced == 0
    assert cost == pytest.approx(expected, rel=1e-9)  # LiteLLM's default cache rates: 1.25x and 0.1x input
    assert version.startswith("ccusage-20.0.24+model_prices_and_context_window-")


def test_a_run_whose_container_never_starts_says_why_in_last_run(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess
) -> None:
    """No runner, no summary: the cause comes from the Job's condition and the pod's container state."""
    spec = usage_spec(
        llm={"model": "claude-sonnet-4-5", "apiKeySecretRef": {"name": "no-such-secret"}}, run={"timeoutSeconds": 5}
    )
    apply(control_plane, ns, sessionprocessor("keyless", spec))
    job_name = start_run_now(control_plane, kube, ns, "keyless", "never-starts")
    status = wait_for_run(kube, ns, "keyless", job_name, timeout=60)
    last = status["lastRun"]
    print(f"\nlastRun.message: {last.get('message')}")
    assert last["outcome"] == "deadline_exceeded"
    assert last["message"].startswith("DeadlineExceeded: ")
    # The Event is posted after the status is patched, from kopf's own queue: under load it lagged.
    failed = wait_for(lambda: events(kube, ns, "keyless", "RunFailed"), CONVERGE_SECONDS, "a RunFailed Event")
    assert len(failed) == 1 and last["message"] in failed[0]["message"]


# --- 6. restarts -----------------------------------------------------------------------------------------
def usage_after_one_run(
    control_plane: ControlPlane, kube: KubeClient, ns: str, database_dir: Path
) -> tuple[str, dict[str, Any]]:
    """The processor ``usage`` with one run-now run recorded: the run's Job and the status then."""
    bind_directory(control_plane, ns, "transcripts", CORPUS, read_only=True)
    bind_directory(control_plane, ns, "warehouse", database_dir)
    apply(control_plane, ns, sessionprocessor("usage", usage_spec()))
    served = start_run_now(control_plane, kube, ns, "usage", "before-restart")
    return served, wait_for_run(kube, ns, "usage", served)


def test_operator_restart_loses_no_status_and_duplicates_no_job(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess, database_dir: Path
) -> None:
    served, before = usage_after_one_run(control_plane, kube, ns, database_dir)
    cronjob_uid = kube.get(cronjob_path(ns, "usage"))["metadata"]["uid"]  # type: ignore[index]

    # A crash (SIGKILL), and a token that arrives while the operator is down.
    operator.stop(signal.SIGKILL)
    annotate_run_now(control_plane, ns, "usage", "while-down")
    operator.start()
    while_down = start_run_now_wait_only(kube, ns, "usage", "while-down")
    after = wait_for_run(kube, ns, "usage", while_down)
    assert before["lastRun"] in after.get("recentRuns", []), "the run recorded before the restart is kept"
    assert after["lastSuccessfulTime"] >= before["lastSuccessfulTime"]

    def both_succeeded() -> list[dict[str, Any]] | None:
        found = events(kube, ns, "usage", "RunSucceeded")
        return found if len(found) >= 2 else None

    assert len(wait_for(both_succeeded, CONVERGE_SECONDS, "a RunSucceeded Event for each run")) == 2
    names = sorted(job["metadata"]["name"] for job in jobs_of(kube, ns, "usage"))
    assert names == sorted([served, while_down]), names
    assert kube.get(cronjob_path(ns, "usage"))["metadata"]["uid"] == cronjob_uid  # type: ignore[index]


def test_a_clean_restart_serves_no_token_twice_and_records_nothing_again(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess, database_dir: Path
) -> None:
    served, _ = usage_after_one_run(control_plane, kube, ns, database_dir)
    wait_for(lambda: events(kube, ns, "usage", "RunSucceeded"), CONVERGE_SECONDS, "a RunSucceeded Event")
    cronjob_uid = kube.get(cronjob_path(ns, "usage"))["metadata"]["uid"]  # type: ignore[index]
    settled = cr(kube, ns, "usage")

    operator.restart(signal.SIGTERM)
    time.sleep(5)  # a quiet window: the restarted operator has listed everything and must do nothing
    assert [job["metadata"]["name"] for job in jobs_of(kube, ns, "usage")] == [served]
    assert cr(kube, ns, "usage")["status"] == settled["status"]
    assert kube.get(cronjob_path(ns, "usage"))["metadata"]["uid"] == cronjob_uid  # type: ignore[index]
    assert len(events(kube, ns, "usage", "RunSucceeded")) == 1


def start_run_now_wait_only(kube: KubeClient, namespace: str, name: str, token: str) -> str:
    def served() -> str | None:
        for job in jobs_of(kube, namespace, name):
            if (job["metadata"].get("annotations") or {}).get(ANNOTATION_RUN_NOW_TOKEN) == token:
                return str(job["metadata"]["name"])
        return None

    return wait_for(served, 30, f"a Job serving run-now token {token}")


# --- last: deletion (late in the module, when the garbage collector has long discovered the CRD) ---------
def test_deleting_the_sessionprocessor_deletes_its_cronjob_and_jobs(
    control_plane: ControlPlane, ns: str, kube: KubeClient, operator: OperatorProcess
) -> None:
    apply(control_plane, ns, sessionprocessor("usage", usage_spec()))
    wait_for(lambda: kube.get(cronjob_path(ns, "usage")), CONVERGE_SECONDS, "the CronJob")
    # The pod of this Job waits (no claim exists: it stays Pending), so the Job is still active when the CR goes.
    job_name = start_run_now(control_plane, kube, ns, "usage", "before-delete")
    assert not cr(kube, ns, "usage")["metadata"].get("finalizers"), "the SessionProcessor must carry no finalizer"
    control_plane.kubectl("delete", "sessionprocessor", "usage", "--wait=true", "--timeout=30s", namespace=ns)
    wait_for(lambda: kube.get(cronjob_path(ns, "usage")) is None, 60, "the CronJob to be garbage-collected")
    wait_for(lambda: kube.get(job_path(ns, job_name)) is None, 60, "the Job to be garbage-collected")
    assert "put it back" not in operator.log_text().split(job_name)[-1], "the operator must not restore it"
