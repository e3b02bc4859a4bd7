"""The PROGRESS column: the running Job's progress read from its database Lease, cleared when it ends."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from sessionpipe_contract import ANNOTATION_PROGRESS
from sessionpipe_operator import render
from sessionpipe_operator.k8s import sessionprocessor_path
from sessionpipe_operator.leader import lease_path
from sessionpipe_operator.models import SessionProcessorSpec
from sessionpipe_operator.progress import progress_text, refresh_progress
from sessionpipe_operator.state import OperatorState
from tests.unit.operator.fake_kube import FakeKube
from tests.unit.operator.sessionprocessors import NS, bodies, create, read, reconcile_named, spec


def lease(holder: str | None, published: Any) -> dict[str, Any]:
    value = published if isinstance(published, str) or published is None else json.dumps(published)
    body: dict[str, Any] = {"metadata": {"annotations": {ANNOTATION_PROGRESS: value} if value else {}}, "spec": {}}
    if holder:
        body["spec"]["holderIdentity"] = holder
    return body


USAGE = {"processor": "usage", "filesDone": 1234, "filesTotal": 5000, "bytesDone": 1, "bytesTotal": 2}


def test_the_column_reads_files_done_of_total_with_thousands_separators() -> None:
    assert progress_text(lease("usage-run-1-x7k2p", USAGE), "usage", ["usage-run-1"]) == "1,234/5,000"


@pytest.mark.parametrize(
    ("holder", "published", "active"),
    [
        ("usage-run-1-x7k2p", USAGE, []),  # no Job runs
        ("verify-run-9-abcde", USAGE, ["usage-run-1"]),  # another processor's run holds the shared Lease
        (None, USAGE, ["usage-run-1"]),  # released
        ("usage-run-1-x7k2p", None, ["usage-run-1"]),  # held, nothing published yet
        ("usage-run-1-x7k2p", {**USAGE, "processor": "verification"}, ["usage-run-1"]),
        ("usage-run-1-x7k2p", "{not json", ["usage-run-1"]),
        ("usage-run-1-x7k2p", {**USAGE, "filesDone": 6000}, ["usage-run-1"]),
        ("usage-run-1-x7k2p", {**USAGE, "filesDone": "12"}, ["usage-run-1"]),
        ("usage-run-10-x7k2p", USAGE, ["usage-run-1"]),  # a name that merely starts like an active Job's
    ],
)
def test_no_progress_unless_one_of_the_processors_running_jobs_published_it(
    holder: str | None, published: Any, active: list[str]
) -> None:
    assert progress_text(lease(holder, published), "usage", active) is None


def running(kube: FakeKube, name: str, jobs: list[str]) -> None:
    kube.edit(
        sessionprocessor_path(NS, name),
        lambda body: body.setdefault("status", {}).update(active=jobs or None, activeCount=len(jobs)),
    )


def test_the_loop_shows_the_running_jobs_progress_and_clears_it_when_the_job_ends(
    state: OperatorState, kube: FakeKube, logger: logging.Logger
) -> None:
    create(kube, "usage", spec())
    reconcile_named(state, kube, "usage", logger)
    name = render.lease_name_for(SessionProcessorSpec.model_validate(spec()))
    kube.put(lease_path(NS, name), lease("usage-run-1-x7k2p", USAGE))
    running(kube, "usage", ["usage-run-1"])
    state.bodies = bodies(kube)
    refresh_progress(state)
    assert read(kube, "usage").status["progress"] == "1,234/5,000"

    state.bodies = bodies(kube)
    kube.calls.clear()
    refresh_progress(state)  # unchanged: one Lease read, no write
    assert kube.calls == [("GET", lease_path(NS, name))]

    running(kube, "usage", [])
    state.bodies = bodies(kube)
    refresh_progress(state)
    assert "progress" not in read(kube, "usage").status


def test_processors_without_a_running_job_cost_no_request(
    state: OperatorState, kube: FakeKube, logger: logging.Logger
) -> None:
    create(kube, "usage", spec())
    reconcile_named(state, kube, "usage", logger)
    state.bodies = bodies(kube)
    kube.calls.clear()
    refresh_progress(state)
    assert kube.calls == []
