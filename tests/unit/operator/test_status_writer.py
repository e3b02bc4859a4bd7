"""Status writes: a read-modify-write that recomputes on a conflict and gives up after WRITE_ATTEMPTS."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from sessionpipe_operator.k8s import sessionprocessor_path
from sessionpipe_operator.state import OperatorState
from sessionpipe_operator.status_writer import WRITE_ATTEMPTS, update_status
from tests.unit.operator.fake_kube import FakeKube
from tests.unit.operator.sessionprocessors import NS, create, read

STATUS = sessionprocessor_path(NS, "p", subresource="status")


def someone_else_writes(kube: FakeKube, field: str, value: Any) -> None:
    kube.edit(sessionprocessor_path(NS, "p"), lambda body: body.setdefault("status", {}).update({field: value}))


def test_a_conflicting_write_in_between_is_read_again_and_the_status_recomputed(
    state: OperatorState, kube: FakeKube
) -> None:
    create(kube, "p")
    seen: list[dict[str, Any]] = []

    def count_runs(cr: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(status))
        status["consecutiveFailures"] = int(status.get("activeCount") or 0) + 1
        return status

    kube.before("PUT", STATUS, lambda: someone_else_writes(kube, "activeCount", 4))
    written = update_status(state, NS, "p", count_runs)

    assert seen == [{}, {"activeCount": 4}]  # computed afresh from what the other writer left
    assert written == {"activeCount": 4, "consecutiveFailures": 5}
    assert read(kube, "p").status == written
    assert len(kube.calls_of("PUT")) == 2


def test_status_writes_give_up_after_write_attempts_with_a_temporary_error(
    state: OperatorState, kube: FakeKube
) -> None:
    create(kube, "p")
    writes = iter(range(100))
    kube.before("PUT", STATUS, lambda: someone_else_writes(kube, "activeCount", next(writes)), times=WRITE_ATTEMPTS)

    with pytest.raises(kopf.TemporaryError, match="kept changing"):
        update_status(state, NS, "p", lambda cr, status: {**status, "cronJobName": "p"})
    assert len(kube.calls_of("PUT")) == WRITE_ATTEMPTS
    assert "cronJobName" not in read(kube, "p").status


def test_an_unchanged_status_is_not_written(state: OperatorState, kube: FakeKube) -> None:
    create(kube, "p")
    update_status(state, NS, "p", lambda cr, status: {**status, "cronJobName": "p"})
    kube.calls.clear()
    assert update_status(state, NS, "p", lambda cr, status: {**status, "cronJobName": "p"}) == {"cronJobName": "p"}
    assert kube.calls_of("PUT") == []


def test_none_values_are_dropped_as_the_api_server_prunes_them(state: OperatorState, kube: FakeKube) -> None:
    create(kube, "p")
    update_status(state, NS, "p", lambda cr, status: {"cronJobName": "p", "nextScheduleTime": None})
    kube.calls.clear()
    update_status(state, NS, "p", lambda cr, status: {"cronJobName": "p", "nextScheduleTime": None})
    assert read(kube, "p").status == {"cronJobName": "p"}
    assert kube.calls_of("PUT") == []


def test_a_processor_gone_before_or_during_the_write_is_no_error(state: OperatorState, kube: FakeKube) -> None:
    assert update_status(state, NS, "p", lambda cr, status: {"cronJobName": "p"}) is None
    create(kube, "p")
    kube.before("PUT", STATUS, lambda: kube.delete(sessionprocessor_path(NS, "p")))
    assert update_status(state, NS, "p", lambda cr, status: {"cronJobName": "p"}) is None
