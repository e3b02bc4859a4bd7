"""The stale check: time-based conditions recomputed from the index, written only when they change."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sessionpipe_operator.k8s import sessionprocessor_path
from sessionpipe_operator.stale import check_time_based_conditions
from sessionpipe_operator.state import OperatorState
from tests.unit.operator.fake_kube import FakeKube
from tests.unit.operator.sessionprocessors import NS, bodies, condition, create, read, reconcile_named, spec


def test_a_processor_whose_last_success_is_too_old_becomes_stale(
    state: OperatorState, kube: FakeKube, logger: logging.Logger
) -> None:
    create(kube, "hourly", spec(schedule="@hourly"))
    reconcile_named(state, kube, "hourly", logger)
    long_ago = (datetime.now(UTC) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    kube.edit(sessionprocessor_path(NS, "hourly"), lambda body: body["status"].update(lastSuccessfulTime=long_ago))
    assert condition(read(kube, "hourly"), "Stale")["status"] == "False"  # the index lags: stale not seen yet

    state.bodies = bodies(kube)
    check_time_based_conditions(state)

    stale = condition(read(kube, "hourly"), "Stale")
    assert (stale["status"], stale["reason"]) == ("True", "NoRecentSuccess")
    assert condition(read(kube, "hourly"), "Ready")["reason"] == "Stale"


def test_nothing_is_written_when_time_changed_no_condition(
    state: OperatorState, kube: FakeKube, logger: logging.Logger
) -> None:
    create(kube, "hourly", spec(schedule="@hourly"))
    reconcile_named(state, kube, "hourly", logger)
    state.bodies = bodies(kube)
    kube.calls.clear()
    check_time_based_conditions(state)
    assert kube.calls == []
