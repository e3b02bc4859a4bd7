"""One writer per database: of two processors running one processor on one database file, the older runs.

Against the in-memory API server (fake_kube): the reconcile and release use cases as the handlers
call them, with the ``sessionprocessors_by_database`` index rebuilt from what the fake holds.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sessionpipe_operator import reconcile
from sessionpipe_operator.k8s import sessionprocessor_path
from sessionpipe_operator.state import OperatorState
from tests.unit.operator.conftest import PostedEvent
from tests.unit.operator.fake_kube import FakeKube
from tests.unit.operator.sessionprocessors import (
    NS,
    by_database,
    condition,
    create,
    cronjob,
    read,
    reconcile_named,
    spec,
)


def test_the_older_of_two_writers_runs_and_the_newer_gets_invalid_spec(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent]
) -> None:
    create(kube, "older")
    create(kube, "newer")
    reconcile_named(state, kube, "older", logger)
    reconcile_named(state, kube, "newer", logger)

    assert cronjob(kube, "older") is not None
    assert cronjob(kube, "newer") is None
    refused = condition(read(kube, "newer"), "InvalidSpec")
    assert refused["status"] == "True"
    assert "'older' already runs processor 'usage' on database warehouse:" in refused["message"]
    assert condition(read(kube, "older"), "InvalidSpec")["status"] == "False"
    assert [(e.type, e.reason, e.name) for e in posted] == [("Warning", "InvalidSpec", "newer")]

    reconcile_named(state, kube, "newer", logger)  # a resume: the same refusal is not announced twice
    assert len(posted) == 1


@pytest.fixture
def old_spec(state: OperatorState, kube: FakeKube, logger: logging.Logger) -> dict[str, Any]:
    """Two writers of one database reconciled, the newer refused; the older's spec."""
    create(kube, "older")
    create(kube, "newer")
    reconcile_named(state, kube, "older", logger)
    reconcile_named(state, kube, "newer", logger)
    return dict(read(kube, "older").body["spec"])


def test_deleting_the_older_writer_frees_the_newer(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, old_spec: dict[str, Any]
) -> None:

    kube.delete(sessionprocessor_path(NS, "older"))
    assert cronjob(kube, "older") is None  # garbage collection, through the owner reference
    reconcile.release_database(state, NS, "older", old_spec, by_database(kube), logger)

    assert cronjob(kube, "newer") is not None
    assert condition(read(kube, "newer"), "InvalidSpec")["status"] == "False"
    assert condition(read(kube, "newer"), "Ready")["status"] == "True"


def test_two_writers_reconciled_before_either_was_indexed_end_with_the_older_running(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent]
) -> None:
    create(kube, "older")
    create(kube, "newer")
    newer_alone = {key: [h for h in holders if h[1] == "newer"] for key, holders in by_database(kube).items()}
    reconcile_named(state, kube, "newer", logger, index=newer_alone)  # "older" not indexed yet
    assert cronjob(kube, "newer") is not None

    reconcile_named(state, kube, "older", logger)

    assert cronjob(kube, "older") is not None
    assert condition(read(kube, "newer"), "InvalidSpec")["status"] == "True"
    newer_cronjob = cronjob(kube, "newer")
    assert newer_cronjob is not None and newer_cronjob["spec"]["suspend"] is True  # left, but never runs


def test_moving_the_older_writer_to_another_database_frees_the_newer(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, old_spec: dict[str, Any]
) -> None:

    kube.edit(sessionprocessor_path(NS, "older"), lambda body: body["spec"]["database"].update(path="other.duckdb"))
    reconcile_named(state, kube, "older", logger)
    reconcile.release_database(state, NS, "older", old_spec, by_database(kube), logger)

    assert condition(read(kube, "newer"), "InvalidSpec")["status"] == "False"
    assert cronjob(kube, "newer") is not None


def test_different_processors_or_databases_are_no_rivals(
    state: OperatorState, kube: FakeKube, logger: logging.Logger, posted: list[PostedEvent]
) -> None:
    create(kube, "usage")
    create(kube, "verification", spec(processor="verification"))
    create(kube, "elsewhere", spec(database={"claimName": "warehouse", "path": "b.duckdb"}))
    for name in ("usage", "verification", "elsewhere"):
        reconcile_named(state, kube, name, logger)
    for name in ("usage", "verification", "elsewhere"):
        assert cronjob(kube, name) is not None
        assert condition(read(kube, name), "InvalidSpec")["status"] == "False"
    assert posted == []
