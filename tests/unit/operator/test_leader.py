"""Leader election over one Lease: one holder at a time, takeover only after a silent full duration.

The API server is stood in for by :class:`FakeLeases`, which keeps the one rule that makes the
election safe: a write must carry the ``resourceVersion`` it read, else 409 Conflict. The real
thing is exercised by tests/cluster/test_peering.py.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from sessionpipe_operator.k8s import ApiError
from sessionpipe_operator.leader import (
    DEFAULT_LEASE_NAME,
    DEFAULT_LEASE_SECONDS,
    InvalidLeaderSettings,
    LeaderElector,
    LeaderSettings,
    Observation,
    claimed,
    holder,
    may_take,
    observe,
    released,
)

WALL = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class FakeLeases:
    """Leases by path, with resourceVersion checks like the API server's."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.failing = False
        self.lock = threading.Lock()

    def _check(self) -> None:
        if self.failing:
            raise OSError("connection refused")

    def get(self, path: str) -> dict[str, Any] | None:
        self._check()
        with self.lock:
            found = self.objects.get(path)
            return copy.deepcopy(found) if found else None

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check()
        with self.lock:
            full = f"{path}/{body['metadata']['name']}"
            if full in self.objects:
                raise ApiError(409, "AlreadyExists", "exists")
            return self._store(full, body)

    def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check()
        with self.lock:
            current = self.objects[path]
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", "the object has been modified")
            return self._store(path, body)

    def _store(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = copy.deepcopy(dict(body))
        stored["metadata"] = {**stored["metadata"], "resourceVersion": str(self.version)}
        self.objects[path] = stored
        return copy.deepcopy(stored)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(identity: str, duration: int = 15) -> LeaderSettings:
    return LeaderSettings(
        enabled=True, namespace="ops", name="sessionpipe-operator", identity=identity, duration_seconds=duration
    )


def elector(api: FakeLeases, identity: str, clock: Clock, duration: int = 15) -> LeaderElector:
    return LeaderElector(api, settings(identity, duration), clock=clock)  # type: ignore[arg-type]


# --- the pure rules ------------------------------------------------------------------------------------
def test_a_held_lease_may_be_taken_only_after_a_full_duration_without_change_by_our_clock() -> None:
    lease = {"metadata": {"resourceVersion": "7"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
    seen = observe(None, lease, 100.0)
    assert not may_take(lease, "b", seen, 114.9, 15)
    assert may_take(lease, "b", observe(seen, lease, 114.9), 115.0, 15)  # unchanged: the first sight counts
    renewed = {**lease, "metadata": {"resourceVersion": "8"}}
    again = observe(seen, renewed, 114.0)
    assert again == Observation("8", 114.0)  # a renewal restarts the wait
    assert not may_take(renewed, "b", again, 120.0, 15)
    assert may_take(lease, "a", seen, 100.0, 15), "the holder itself renews at any time"
    assert may_take({"spec": {}}, "b", seen, 100.0, 15), "a released Lease is free"


def test_claiming_counts_transitions_and_releasing_clears_the_holder() -> None:
    first = claimed(None, "a", 15, WALL)
    assert first["spec"]["holderIdentity"] == "a"
    assert first["spec"]["leaseTransitions"] == 0
    renewal = claimed({**first, "metadata": {"resourceVersion": "1"}}, "a", 15, WALL)
    assert renewal["spec"]["leaseTransitions"] == 0
    assert renewal["metadata"]["resourceVersion"] == "1", "the write carries the version read"
    takeover = claimed(renewal, "b", 15, WALL)
    assert takeover["spec"]["leaseTransitions"] == 1
    assert holder(takeover) == "b"
    assert released(takeover, "a") is None, "only the holder gives it up"
    given_up = released(takeover, "b")
    assert given_up is not None and holder(given_up) == ""


def test_settings_default_to_on_with_the_pods_name_and_namespace_and_refuse_bad_values() -> None:
    read = LeaderSettings.from_env({"POD_NAME": "op-7f9", "POD_NAMESPACE": "sessionpipe"})
    assert (read.enabled, read.identity, read.namespace, read.name) == (
        True,
        "op-7f9",
        "sessionpipe",
        DEFAULT_LEASE_NAME,
    )
    assert read.duration_seconds == DEFAULT_LEASE_SECONDS
    assert read.renew_deadline == 10 and read.retry_seconds == 2
    assert not LeaderSettings.from_env({"SESSIONPIPE_OPERATOR_LEADER_ELECTION": "false"}).enabled
    for bad in ({"SESSIONPIPE_OPERATOR_LEADER_ELECTION": "maybe"}, {"SESSIONPIPE_OPERATOR_LEADER_LEASE_SECONDS": "1"}):
        with pytest.raises(InvalidLeaderSettings, match=next(iter(bad))):
            LeaderSettings.from_env(bad)


# --- the elector ---------------------------------------------------------------------------------------
def test_one_leader_and_a_standby_that_takes_over_only_once_the_leader_is_silent() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_acquire()
    for _ in range(20):  # a renews every 2 s; b never gets in
        clock.now += 2
        assert not b.try_acquire()
        assert a.try_acquire()
    # a dies (no more renewals): b waits a full duration after it last saw the Lease change.
    clock.now += 2
    assert not b.try_acquire()
    clock.now += 14.9
    assert not b.try_acquire()
    clock.now += 0.1
    assert b.try_acquire()
    lease = api.get(b.path)
    assert lease is not None and holder(lease) == "b" and lease["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire(), "the old leader, were it alive, would find the Lease taken"


def test_a_released_lease_is_taken_at_the_next_look() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    a.acquire()
    assert not b.try_acquire()
    a.release()
    assert b.try_acquire()


def test_two_contenders_writing_at_once_get_one_winner() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    a.try_acquire()
    a.release()
    lease = api.get(a.path)
    assert lease is not None
    # Both read the free Lease; the second write carries a stale version and is refused.
    api.replace(a.path, claimed(lease, "a", 15, WALL))
    with pytest.raises(ApiError) as raised:
        api.replace(b.path, claimed(lease, "b", 15, WALL))
    assert raised.value.conflict
    assert not b.try_acquire()


def test_a_leader_that_cannot_renew_gives_up_within_the_renew_deadline() -> None:
    api = FakeLeases()
    leader = LeaderElector(api, settings("a", duration=3))  # type: ignore[arg-type]
    leader.acquire()
    lost: list[str] = []
    done = threading.Event()
    started = time.monotonic()
    leader.keep_leading(lambda why: (lost.append(why), done.set()))
    api.failing = True  # the API server is unreachable from now on
    assert done.wait(5), "the leader kept leading without renewing"
    elapsed = time.monotonic() - started
    assert elapsed <= leader.settings.renew_deadline + 0.6
    assert lost and "not renewed" in lost[0]


def test_a_leader_whose_lease_was_taken_stops() -> None:
    api = FakeLeases()
    leader = LeaderElector(api, settings("a", duration=3))  # type: ignore[arg-type]
    leader.acquire()
    lease = api.get(leader.path)
    assert lease is not None
    api.replace(leader.path, claimed(lease, "intruder", 3, WALL))
    done = threading.Event()
    lost: list[str] = []
    leader.keep_leading(lambda why: (lost.append(why), done.set()))
    assert done.wait(5)
    assert "intruder" in lost[0]
