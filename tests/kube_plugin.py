"""pytest fixtures for tests against the real test control plane.

``control_plane`` starts etcd, kube-apiserver, kube-controller-manager and the pod executor once per
test session, and only when a test asks for it, so runs without cluster tests pay nothing. Missing
binaries fail the test (never skip it) with the command that builds them.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from sessionpipe_kubetest.build import toolset
from sessionpipe_kubetest.cluster import MISSING_BINARIES_HINT, ControlPlane

SaApiFactory = Callable[[str, str], client.ApiClient]


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A running control plane (admin :attr:`~ControlPlane.kubeconfig`, :attr:`~ControlPlane.executor`…)."""
    tools = toolset()
    if not tools.complete:
        pytest.fail(f"{MISSING_BINARIES_HINT} (expected in {tools.bin_dir})", pytrace=False)
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"), tools)
    plane.start()
    print(f"\n[control plane] ready in {plane.startup_seconds:.1f}s at {plane.server}; logs in {plane.workdir}")
    sys.stdout.flush()
    try:
        yield plane
    finally:
        plane.stop()


def _namespace_name(node_name: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", node_name.lower()).strip("-")[:40].strip("-") or "test"
    return f"{stem}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted afterwards without waiting."""
    name = _namespace_name(request.node.name)
    control_plane.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def _client_from(kubeconfig: Path) -> client.ApiClient:
    api: client.ApiClient = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    return api


@pytest.fixture(scope="session")
def k8s_api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """A Kubernetes API client acting as the cluster admin."""
    api = _client_from(control_plane.kubeconfig)
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def sa_api(control_plane: ControlPlane) -> Iterator[SaApiFactory]:
    """Factory ``(namespace, service_account) -> ApiClient`` acting as that (existing) service account."""
    made: list[client.ApiClient] = []

    def make(namespace: str, service_account: str) -> client.ApiClient:
        kubeconfig: Path = control_plane.service_account_kubeconfig(namespace, service_account)
        api = _client_from(kubeconfig)
        made.append(api)
        return api

    try:
        yield make
    finally:
        for api in made:
            api.close()  # type: ignore[no-untyped-call]
