"""Reconcile: a workable spec gets its CronJob and a Ready status; an unworkable one InvalidSpec, once."""

from __future__ import annotations

import logging

import pytest

from sessionpipe_operator import render
from sessionpipe_operator.k8s import cronjob_path, sessionprocessor_path
from sessionpipe_operator.state import OperatorState
from tests.unit.operator.conftest import PostedEvent
from tests.unit.operator.fake_kube import FakeKube
from tests.unit.operator.sessionprocessors import NS, condition, create, cronjob, read, reconcile_named, spec


def test_a_valid_spec_gets_its_rendered_cronjob_and_a_ready_status(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent]
) -> None:
    create(kube, "daily", spec(schedule="@daily"))
    reconcile_named(state, kube, "daily", logger)

    found = cronjob(kube, "daily")
    assert found is not None and found["spec"]["schedule"] == "@daily"
    assert not render.cronjob_drifted(state.desired[(NS, "daily")], found)
    processor = read(kube, "daily")
    assert processor.status["cronJobName"] == "daily"
    assert processor.status["observedGeneration"] == processor.meta.generation
    assert processor.status["nextScheduleTime"].endswith("T00:00:00Z")
    assert condition(processor, "Ready")["reason"] == "Scheduled"
    assert found["metadata"]["ownerReferences"][0]["uid"] == processor.meta.uid
    assert posted == []


def test_reconciling_an_unchanged_spec_again_writes_nothing(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent]
) -> None:
    create(kube, "daily")
    reconcile_named(state, kube, "daily", logger)
    kube.calls.clear()
    reconcile_named(state, kube, "daily", logger)
    assert kube.calls_of("APPLY") == [] and kube.calls_of("PUT") == []


def test_a_changed_spec_updates_the_cronjob(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent]
) -> None:
    create(kube, "daily")
    reconcile_named(state, kube, "daily", logger)
    kube.edit(sessionprocessor_path(NS, "daily"), lambda body: body["spec"].update(schedule="every 2h"))
    reconcile_named(state, kube, "daily", logger)
    found = cronjob(kube, "daily")
    assert found is not None and found["spec"]["schedule"] == "0 */2 * * *"
    assert read(kube, "daily").status["observedGeneration"] == 2


def test_a_schedule_without_exact_cron_form_is_invalid_spec_once(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent]
) -> None:
    create(kube, "odd", spec(schedule="every 7m"))
    reconcile_named(state, kube, "odd", logger)
    reconcile_named(state, kube, "odd", logger)  # a resume: no second Event

    invalid = condition(read(kube, "odd"), "InvalidSpec")
    assert invalid["status"] == "True" and invalid["message"].startswith("spec.schedule: ")
    assert condition(read(kube, "odd"), "Ready")["reason"] == "InvalidSpec"
    assert cronjob(kube, "odd") is None
    assert [(e.type, e.reason) for e in posted] == [("Warning", "InvalidSpec")]


def test_an_image_the_policy_refuses_is_invalid_spec(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent]
) -> None:
    create(kube, "foreign", spec(image="docker.io/evil/miner:1"))
    reconcile_named(state, kube, "foreign", logger)
    assert (
        "spec.image 'docker.io/evil/miner:1' is not allowed"
        in condition(read(kube, "foreign"), "InvalidSpec")["message"]
    )
    assert cronjob(kube, "foreign") is None


def test_a_spec_made_invalid_suspends_the_cronjob_of_the_spec_before(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent]
) -> None:
    create(kube, "daily")
    reconcile_named(state, kube, "daily", logger)
    kube.edit(sessionprocessor_path(NS, "daily"), lambda body: body["spec"].update(schedule="every 7m"))
    reconcile_named(state, kube, "daily", logger)

    found = cronjob(kube, "daily")
    assert found is not None and found["spec"]["suspend"] is True
    assert (NS, "daily") not in state.desired
    assert read(kube, "daily").status.get("nextScheduleTime") is None


def test_a_cronjob_the_api_server_rejects_is_invalid_spec(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent]
) -> None:
    from sessionpipe_operator.k8s import ApiError

    def reject() -> None:
        raise ApiError(422, "Invalid", 'CronJob.batch "daily" is invalid: spec.timeZone: unknown time zone Mars/Base')

    create(kube, "daily", spec(timeZone="Mars/Base"))
    kube.before("APPLY", cronjob_path(NS, "daily"), reject)
    reconcile_named(state, kube, "daily", logger)
    assert "the API server rejects the CronJob: " in condition(read(kube, "daily"), "InvalidSpec")["message"]
    assert [e.reason for e in posted] == ["InvalidSpec"]


@pytest.mark.parametrize(
    ("written", "effective"),
    [("@daily", "0 0 * * *"), ("every 2h", "0 */2 * * *"), ("*/15  * * * *", "*/15 * * * *")],
)
def test_the_status_shows_the_effective_cron_and_the_spec_keeps_what_was_written(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, written: str, effective: str
) -> None:
    create(kube, "timed", spec(schedule=written))
    reconcile_named(state, kube, "timed", logger)
    processor = read(kube, "timed")
    assert processor.status["schedule"] == effective
    assert processor.body["spec"]["schedule"] == written


def test_an_invalid_schedule_shows_no_effective_cron(
    state: OperatorState, kube: FakeKube, logger: logging.Logger
) -> None:
    create(kube, "timed", spec(schedule="@daily"))
    reconcile_named(state, kube, "timed", logger)
    kube.edit(sessionprocessor_path(NS, "timed"), lambda body: body["spec"].update(schedule="every 7m"))
    reconcile_named(state, kube, "timed", logger)
    assert "schedule" not in read(kube, "timed").status


def test_a_reconciled_processor_exports_its_run_series_at_zero_so_its_first_run_is_an_increase(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent]
) -> None:
    """Prometheus' increase() cannot see a series born at 1: the first run of an outcome would not count."""
    from prometheus_client import REGISTRY

    llm = {"model": "claude-sonnet-4-6", "apiKeySecretRef": {"name": "anthropic", "key": "key"}}
    create(kube, "fresh-usage")
    create(kube, "fresh-verification", spec(processor="verification", llm=llm, database={"claimName": "other"}))
    reconcile_named(state, kube, "fresh-usage", logger)
    reconcile_named(state, kube, "fresh-verification", logger)

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"namespace": NS, **labels})

    for outcome in ("succeeded", "completed_with_errors", "failed", "lease_lost", "terminated"):
        labels = {"sessionprocessor": "fresh-usage", "processor": "usage", "outcome": outcome}
        assert value("sessionpipe_runs_total", **labels) == 0, outcome
    for counter in ("llm_calls", "llm_tokens", "llm_cost_microusd"):
        labels = {"sessionprocessor": "fresh-verification", "processor": "verification", "counter": counter}
        assert value("sessionpipe_run_counters_total", **labels) == 0, counter
    assert value("sessionpipe_llm_cost_usd_total", sessionprocessor="fresh-verification", processor="verification") == 0
    # A processor without an LLM reports no LLM counters.
    labels = {"sessionprocessor": "fresh-usage", "processor": "usage", "counter": "llm_calls"}
    assert value("sessionpipe_run_counters_total", **labels) is None
