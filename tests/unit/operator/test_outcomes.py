"""Job outcomes: a finished Job becomes one run in the status, with one Event, however often it is seen."""

from __future__ import annotations

import json
import logging

from prometheus_client import REGISTRY

from sessionpipe_operator import outcomes
from sessionpipe_operator.state import OperatorState
from tests.unit.operator.conftest import PostedEvent
from tests.unit.operator.fake_kube import FakeKube
from tests.unit.operator.sessionprocessors import (
    NS,
    bodies,
    condition,
    finished_job,
    pod_with_message,
    read,
)

KEY = (NS, "daily")
SUMMARY = {"outcome": "succeeded", "scanned": 3, "processed": 2, "skipped": 1, "errors": 0, "items": 40}


def test_a_finished_job_is_recorded_once_with_one_event(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    job = finished_job(kube, processor, "daily-1", "Complete")
    pod_with_message(kube, "daily-1", json.dumps(SUMMARY))
    assert outcomes.needs_recording(job, bodies(kube)[KEY][0])
    outcomes.record_finished_job(state, NS, job, logger)

    status = read(kube, processor).status
    assert status["lastRun"]["job"] == "daily-1" and status["lastRun"]["processed"] == 2
    assert status["lastSuccessfulTime"] and status["consecutiveFailures"] == 0
    assert [(e.type, e.reason) for e in posted] == [("Normal", "RunSucceeded")]
    assert posted[0].message == "Job daily-1: succeeded (scanned 3, processed 2, skipped 1, errors 0, items 40)"

    assert not outcomes.needs_recording(job, bodies(kube)[KEY][0])  # the replay after a restart
    outcomes.record_finished_job(state, NS, job, logger)  # an event that raced the index update
    assert len(posted) == 1
    assert read(kube, processor).status["recentRuns"] == [status["lastRun"]]


def test_a_failed_job_counts_a_failure_warns_and_says_why(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    job = finished_job(kube, processor, "daily-1", "Failed", reason="BackoffLimitExceeded")
    pod_with_message(kube, "daily-1", "Traceback (most recent call last):\nOSError: disk full", exit_code=1)
    outcomes.record_finished_job(state, NS, job, logger)

    processor_now = read(kube, processor)
    assert processor_now.status["consecutiveFailures"] == 1
    assert "OSError: disk full" in processor_now.status["lastRun"]["message"]
    assert condition(processor_now, "Degraded")["status"] == "True"
    assert [(e.type, e.reason) for e in posted] == [("Warning", "RunFailed")]


def test_a_lease_not_acquired_run_is_a_skip_not_a_failure(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent], processor: str
) -> None:
    job = finished_job(kube, processor, "daily-1", "Failed", reason="PodFailurePolicy", message="exit code 75")
    pod_with_message(kube, "daily-1", json.dumps({"outcome": "lease_not_acquired"}), exit_code=75)
    outcomes.record_finished_job(state, NS, job, logger)
    assert read(kube, processor).status.get("consecutiveFailures") == 0
    assert [(e.type, e.reason) for e in posted] == [("Normal", "RunSkipped")]


def test_a_job_with_success_criteria_met_but_not_complete_is_not_recorded_yet(kube: FakeKube, processor: str) -> None:
    job = finished_job(kube, processor, "daily-1", "SuccessCriteriaMet")
    assert not outcomes.needs_recording(job, bodies(kube)[KEY][0])


def test_a_job_of_a_processor_not_in_the_index_is_not_recorded(kube: FakeKube, processor: str) -> None:
    job = finished_job(kube, processor, "daily-1", "Complete")
    assert not outcomes.needs_recording(job, None)


def test_a_runs_llm_cost_in_microdollars_is_exported_in_dollars(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, processor: str
) -> None:
    job = finished_job(kube, processor, "daily-1", "Complete")
    spent = {**SUMMARY, "counters": {"llm_calls": 3, "llm_cost_microusd": 1_250_000}}
    pod_with_message(kube, "daily-1", json.dumps(spent))
    labels = {"namespace": NS, "sessionprocessor": "daily", "processor": read(kube, processor).spec.processor}
    before = REGISTRY.get_sample_value("sessionpipe_llm_cost_usd_total", labels) or 0.0
    outcomes.record_finished_job(state, NS, job, logger)
    assert REGISTRY.get_sample_value("sessionpipe_llm_cost_usd_total", labels) == before + 1.25
    cost_counter = {**labels, "counter": "llm_cost_microusd"}
    assert REGISTRY.get_sample_value("sessionpipe_run_counters_total", cost_counter) == 1_250_000
