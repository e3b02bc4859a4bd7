"""The chart without a cluster: lint, and values refused by values.schema.json with a clear message."""

from __future__ import annotations

import subprocess

import pytest

from tests.kube.build import toolset
from tests.runner_support import REPO

CHART = REPO / "charts" / "sessionpipe"


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    helm = toolset().path("helm")
    assert helm.exists(), f"{helm} is missing: run `make controlplane`"
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)


def test_helm_lint_strict_passes() -> None:
    result = _helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "operator.logFormat=xml"], "/operator/logFormat"),
        (["--set", "operator.healthPort=0"], "/operator/healthPort"),
        (["--set", "operator.watchNamespaces={Not_A_Namespace}"], "/operator/watchNamespaces/0"),
        (["--set", "storage.database.accessModes={Sometimes}"], "/storage/database/accessModes/0"),
        (["--set", "storage.sessions.size=lots"], "/storage/sessions/size"),
        (["--set", "image.operator.pullPolicy=Sometimes"], "/image/operator/pullPolicy"),
        (["--set", "processors.usage.schedule=null"], "schedule"),
        (["--set", "colour=blue"], "colour"),
        (["--set", "processors.verification.enabled=true"], "anthropic.existingSecret"),
    ],
)
def test_bad_values_are_refused_naming_the_value(values: list[str], message: str) -> None:
    result = _helm("template", "t", str(CHART), *values)
    assert result.returncode != 0, f"accepted {values}"
    assert message in result.stderr, result.stderr


def test_default_values_render() -> None:
    result = _helm("template", "t", str(CHART))
    assert result.returncode == 0, result.stderr
    assert "kind: SessionProcessor" in result.stdout
