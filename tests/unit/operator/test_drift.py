"""Drift: a CronJob edited or deleted by someone else is put back; its running Jobs are mirrored."""

from __future__ import annotations

import logging

from sessionpipe_operator import drift
from sessionpipe_operator.k8s import cronjob_path, sessionprocessor_path
from sessionpipe_operator.state import OperatorState
from tests.unit.operator.conftest import PostedEvent
from tests.unit.operator.fake_kube import FakeKube
from tests.unit.operator.sessionprocessors import NS, bodies, cronjob, read

KEY = (NS, "daily")


def test_an_edited_cronjob_is_put_back_with_one_event(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    edited = kube.edit(cronjob_path(NS, processor), lambda body: body["spec"].update(schedule="* * * * *"))
    drift.repair_drift(state, KEY, edited, logger)

    found = cronjob(kube, processor)
    assert found is not None and found["spec"]["schedule"] == state.desired[KEY]["spec"]["schedule"]
    assert state.applied_versions[KEY] == found["metadata"]["resourceVersion"]
    assert [(e.reason, e.name) for e in posted] == [("CronJobRepaired", processor)]

    drift.repair_drift(state, KEY, found, logger)  # the echo of that apply is no drift
    assert len(posted) == 1


def test_an_event_older_than_our_last_apply_is_not_drift(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    stale_copy = cronjob(kube, processor)
    assert stale_copy is not None
    stale_copy["spec"]["schedule"] = "* * * * *"  # what an old event said; the cluster holds the rendered one
    stale_copy["metadata"]["resourceVersion"] = "0"
    kube.calls.clear()
    drift.repair_drift(state, KEY, stale_copy, logger)
    assert kube.calls_of("APPLY") == [] and posted == []


def test_a_cronjob_of_another_owner_is_left_alone(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    foreign = kube.edit(
        cronjob_path(NS, processor),
        lambda body: body["metadata"].update(ownerReferences=[{"uid": "someone-else"}]),
    )
    kube.calls.clear()
    drift.repair_drift(state, KEY, foreign, logger)
    assert kube.calls_of("APPLY") == []


def test_a_deleted_cronjob_is_created_again_with_one_event(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    kube.delete(cronjob_path(NS, processor))
    drift.restore_deleted_cronjob(state, KEY, logger)
    assert cronjob(kube, processor) is not None
    assert [e.reason for e in posted] == ["CronJobRestored"]


def test_a_cronjob_deleted_with_its_processor_is_let_go(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    kube.delete(sessionprocessor_path(NS, processor))
    drift.restore_deleted_cronjob(state, KEY, logger)
    assert cronjob(kube, processor) is None
    assert KEY not in state.desired and posted == []


def test_a_cronjob_deleted_while_its_processor_is_being_deleted_is_let_go(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    kube.edit(
        sessionprocessor_path(NS, processor),
        lambda body: body["metadata"].update(deletionTimestamp="2026-01-01T00:00:00Z"),
    )
    kube.delete(cronjob_path(NS, processor))
    drift.restore_deleted_cronjob(state, KEY, logger)
    assert cronjob(kube, processor) is None and posted == []


def test_the_cronjobs_running_jobs_and_last_tick_are_mirrored_into_the_status(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    ticked = kube.edit(
        cronjob_path(NS, processor),
        lambda body: body.setdefault("status", {}).update(
            active=[{"name": "daily-2"}, {"name": "daily-1"}], lastScheduleTime="2026-01-01T00:00:00Z"
        ),
    )
    drift.mirror_cronjob_status(state, KEY, ticked, bodies(kube)[KEY][0])
    status = read(kube, processor).status
    assert status["active"] == ["daily-1", "daily-2"] and status["activeCount"] == 2
    assert status["lastScheduleTime"] == "2026-01-01T00:00:00Z"

    kube.calls.clear()
    drift.mirror_cronjob_status(state, KEY, ticked, bodies(kube)[KEY][0])  # nothing new: no read, no write
    assert kube.calls == []
