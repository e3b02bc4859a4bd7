"""Run-now: one Job now, never beside a running one, also when a scheduled tick races the run-now."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pytest

from sessionpipe_contract import ANNOTATION_RUN_NOW_TOKEN, LABEL_INSTANCE, LABEL_RUN_KIND
from sessionpipe_operator import run_now
from sessionpipe_operator.k8s import cronjob_path, job_path
from sessionpipe_operator.state import OperatorState
from tests.unit.operator.conftest import PostedEvent
from tests.unit.operator.fake_kube import FakeKube
from tests.unit.operator.sessionprocessors import NS, create, cronjob, jobs, read, reconcile_named, spec


def scheduled_job(kube: FakeKube, name: str) -> dict[str, Any]:
    """A Job as the CronJob controller starts it on a tick: running, no conditions yet."""
    return kube.create(
        job_path(NS),
        {"metadata": {"name": f"{name}-29000000", "labels": {LABEL_INSTANCE: name, LABEL_RUN_KIND: "scheduled"}}},
    )


def test_run_now_starts_one_job_registered_in_the_cronjobs_active_list(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    run_now.serve_run_now(state, read(kube, processor), "t1", logger)

    [job] = jobs(kube, processor)
    assert job["metadata"]["annotations"][ANNOTATION_RUN_NOW_TOKEN] == "t1"
    assert job["metadata"]["labels"][LABEL_RUN_KIND] == "run-now"
    found = cronjob(kube, processor)
    assert found is not None
    assert [ref["uid"] for ref in found["status"]["active"]] == [job["metadata"]["uid"]]
    assert [(e.reason, e.message) for e in posted] == [
        ("RunStarted", f"run-now 't1': started Job {job['metadata']['name']}")
    ]


def test_a_token_already_served_starts_nothing(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    run_now.serve_run_now(state, read(kube, processor), "t1", logger)
    run_now.serve_run_now(state, read(kube, processor), "t1", logger)
    assert len(jobs(kube, processor)) == 1
    assert [e.reason for e in posted] == ["RunStarted"]


def test_run_now_is_skipped_while_a_job_is_active(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    running = scheduled_job(kube, processor)
    run_now.serve_run_now(state, read(kube, processor), "t2", logger)

    assert [job["metadata"]["name"] for job in jobs(kube, processor)] == [running["metadata"]["name"]]
    assert [(e.type, e.reason) for e in posted] == [("Normal", "RunSkipped")]
    assert f"Job {running['metadata']['name']} of this processor is still running" in posted[0].message


def test_a_job_listed_active_by_the_cronjob_also_blocks_run_now(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    kube.edit(cronjob_path(NS, processor), lambda body: body.setdefault("status", {}).update(active=[{"name": "x"}]))
    run_now.serve_run_now(state, read(kube, processor), "t3", logger)
    assert jobs(kube, processor) == []
    assert "Job x of this processor is still running" in posted[0].message


def test_a_scheduled_job_started_between_the_check_and_the_registration_wins(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    ticked: list[dict[str, object]] = []
    kube.before(
        "PATCH",
        cronjob_path(NS, processor, subresource="status"),
        lambda: ticked.append(scheduled_job(kube, processor)),
    )
    run_now.serve_run_now(state, read(kube, processor), "t4", logger)

    assert ticked, "the tick was not put between the check and the registration"
    assert [job["metadata"]["name"] for job in jobs(kube, processor)] == [ticked[0]["metadata"]["name"]]
    assert [e.reason for e in posted] == ["RunSkipped"]
    assert "scheduled Job daily-29000000 started at the same moment" in posted[0].message


def test_registration_retries_when_the_cronjob_changed_meanwhile(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    def controller_writes() -> None:
        kube.edit(cronjob_path(NS, processor), lambda body: body.setdefault("status", {}).update(lastScheduleTime="x"))

    kube.before("PATCH", cronjob_path(NS, processor, subresource="status"), controller_writes)
    run_now.serve_run_now(state, read(kube, processor), "t5", logger)

    found = cronjob(kube, processor)
    [job] = jobs(kube, processor)
    assert found is not None and found["status"]["lastScheduleTime"] == "x"
    assert [ref["uid"] for ref in found["status"]["active"]] == [job["metadata"]["uid"]]
    assert len(kube.calls_of("PATCH")) == 2


def test_run_now_on_an_invalid_spec_is_skipped_with_the_reason(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent]
) -> None:
    create(kube, "odd", spec(schedule="every 7m"))
    reconcile_named(state, kube, "odd", logger)
    posted.clear()
    run_now.serve_run_now(state, read(kube, "odd"), "t6", logger)
    assert jobs(kube, "odd") == []
    assert [e.reason for e in posted] == ["RunSkipped"]
    assert "the spec is invalid (spec.schedule: " in posted[0].message


def test_run_now_before_the_cronjob_exists_is_retried(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent]
) -> None:
    create(kube, "early")
    with pytest.raises(kopf.TemporaryError, match="the CronJob does not exist yet"):
        run_now.serve_run_now(state, read(kube, "early"), "t7", logger)
    assert jobs(kube, "early") == []
