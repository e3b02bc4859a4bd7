"""Fixtures of the operator's use-case tests: an in-memory API server, the state, observed Events."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from sessionpipe_operator import events
from sessionpipe_operator.settings import OperatorSettings
from sessionpipe_operator.state import OperatorState
from tests.unit.operator.fake_kube import FakeKube
from tests.unit.operator.sessionprocessors import create, reconcile_named


@dataclass(frozen=True)
class PostedEvent:
    type: str  # Normal or Warning
    reason: str
    message: str
    name: str  # of the object it is about


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def state(kube: FakeKube) -> OperatorState:
    return OperatorState(settings=OperatorSettings(), kube=kube)


@pytest.fixture
def logger() -> logging.Logger:
    return logging.getLogger("sessionpipe-operator-test")


@pytest.fixture(autouse=True)
def posted(monkeypatch: pytest.MonkeyPatch) -> list[PostedEvent]:
    """The Events the use cases post, in order, instead of kopf posting them (which needs a running operator)."""
    found: list[PostedEvent] = []

    def recorder(kind: str) -> Any:
        def post(obj: Mapping[str, Any], *, reason: str, message: str) -> None:
            found.append(PostedEvent(kind, reason, message, obj["metadata"]["name"]))

        return post

    monkeypatch.setattr(events, "post_info", recorder("Normal"))
    monkeypatch.setattr(events, "post_warn", recorder("Warning"))
    return found


@pytest.fixture
def processor(state: OperatorState, kube: FakeKube, logger: logging.Logger) -> str:
    """A processor ``daily`` reconciled: its CronJob in place, its status Ready."""
    create(kube, "daily")
    reconcile_named(state, kube, "daily", logger)
    return "daily"
