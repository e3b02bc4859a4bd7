"""The chart without a cluster: lint, and values refused by values.schema.json with a clear message."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sessionpipe_kubetest.build import toolset
from sessionpipe_operator.models import SessionProcessorSpec
from sessionpipe_operator.render import build_cronjob
from sessionpipe_operator.settings import OperatorSettings
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
        (["--set", "jobPolicy.enabled=maybe"], "/jobPolicy/enabled"),
        (["--set", "jobPolicy.allowedServiceAccounts={runner,Not_A_Name}"], "/jobPolicy/allowedServiceAccounts/1"),
        (["--set-json", 'jobPolicy.allowedImages=["ghcr.io/a/b c"]'], "/jobPolicy/allowedImages/0"),
        (["--set", "pricing.configMap=Not_A_Name"], "/pricing/configMap"),
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


def _job_policy(*values: str) -> tuple[dict[str, list[str]] | None, dict[str, str]]:
    """The rendered policy's allowed lists (``None`` without a policy) and the operator's environment."""
    result = _helm("template", "t", str(CHART), *values)
    assert result.returncode == 0, result.stderr
    documents: list[dict[str, Any]] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    deployment = _deployment(documents)
    env = {
        item["name"]: item.get("value", "") for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    policies = [doc for doc in documents if doc["kind"] == "ValidatingAdmissionPolicy"]
    if not policies:
        return None, env
    variables = {item["name"]: item["expression"] for item in policies[0]["spec"]["variables"]}
    return {name: json.loads(variables[name]) for name in ("allowedImages", "allowedServiceAccounts")}, env


@pytest.mark.parametrize(
    ("values", "images", "accounts"),
    [
        ([], ["ghcr.io/sessionpipe/sessionpipe-job"], ["t-sessionpipe-job"]),
        (
            ["--set", "image.job.repository=registry.example/job", "--set", "jobs.serviceAccount.name=runner"],
            ["registry.example/job"],
            ["runner"],
        ),
        (
            [
                "--set",
                "jobPolicy.allowedImages={registry.example/team/,ghcr.io/x/job}",
                "--set",
                "jobPolicy.allowedServiceAccounts={runner,*}",
            ],
            ["registry.example/team/", "ghcr.io/x/job"],
            ["runner", "*"],
        ),
    ],
)
def test_the_admission_policy_and_the_operator_get_the_same_allowed_lists(
    values: list[str], images: list[str], accounts: list[str]
) -> None:
    allowed, env = _job_policy(*values)
    assert allowed == {"allowedImages": images, "allowedServiceAccounts": accounts}
    assert env["SESSIONPIPE_OPERATOR_ALLOWED_IMAGES"] == ",".join(images)
    assert env["SESSIONPIPE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS"] == ",".join(accounts)


def test_a_disabled_job_policy_renders_no_policy_and_lets_the_operator_allow_anything() -> None:
    allowed, env = _job_policy("--set", "jobPolicy.enabled=false")
    assert allowed is None
    assert env["SESSIONPIPE_OPERATOR_ALLOWED_IMAGES"] == "*"
    assert env["SESSIONPIPE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS"] == "*"


def _processor_specs(*values: str) -> dict[str, dict[str, Any]]:
    result = _helm(
        "template",
        "t",
        str(CHART),
        "--set",
        "processors.verification.enabled=true",
        "--set",
        "anthropic.existingSecret=anthropic",
        *values,
    )
    assert result.returncode == 0, result.stderr
    return {
        doc["metadata"]["name"]: doc["spec"]
        for doc in yaml.safe_load_all(result.stdout)
        if doc and doc["kind"] == "SessionProcessor"
    }


def test_pricing_configmap_reaches_every_job_pod_as_a_mounted_file_named_by_sessionpipe_pricing() -> None:
    assert all("pricing" not in spec for spec in _processor_specs().values())
    specs = _processor_specs("--set", "pricing.configMap=model-prices")
    assert set(specs) == {"usage", "verification"}
    owner = {"apiVersion": "sessionpipe.io/v1alpha1", "kind": "SessionProcessor", "name": "usage", "uid": "u1"}
    for name, spec in specs.items():
        assert spec["pricing"] == {"configMapRef": {"name": "model-prices", "key": "pricing.json"}}
        cronjob = build_cronjob(name, "ns", owner, SessionProcessorSpec.model_validate(spec), OperatorSettings())
        pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert {
            "name": "pricing",
            "configMap": {"name": "model-prices", "items": [{"key": "pricing.json", "path": "pricing.json"}]},
        } in pod["volumes"]
        env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}
        assert env["SESSIONPIPE_PRICING"] == "/etc/sessionpipe/pricing/pricing.json"


def _documents(*values: str) -> list[dict[str, Any]]:
    result = _helm("template", "rel", str(CHART), "-n", "ns", *values)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _deployment(documents: list[dict[str, Any]], component: str = "operator") -> dict[str, Any]:
    """The operator's Deployment (or the dashboard's): the chart renders both."""
    return next(
        doc
        for doc in documents
        if doc["kind"] == "Deployment" and doc["metadata"]["labels"]["app.kubernetes.io/component"] == component
    )


def test_name_overrides_rename_every_resource_and_the_name_label() -> None:
    default = {doc["metadata"]["name"] for doc in _documents() if doc["kind"] != "SessionProcessor"}
    assert "rel-sessionpipe-operator" in default
    renamed = _documents("--set", "nameOverride=pipe")
    names = {doc["metadata"]["name"] for doc in renamed if doc["kind"] != "SessionProcessor"}
    assert "rel-pipe-operator" in names and not any("sessionpipe" in name for name in names)
    deployment = _deployment(renamed)
    assert deployment["metadata"]["labels"]["app.kubernetes.io/name"] == "pipe"
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "pipe"
    full = {
        doc["metadata"]["name"]
        for doc in _documents("--set", "fullnameOverride=sp")
        if doc["kind"] != "SessionProcessor"
    }
    assert {"sp-operator", "sp-job", "sp-operator-leader"} <= full
    assert not any(name.startswith("rel-") for name in full)


def test_global_values_of_a_parent_chart_are_accepted() -> None:
    assert _documents("--set", "global.imageRegistry=registry.example", "--set", "global.storageClass=fast")


def test_operator_pods_take_labels_annotations_priority_and_pull_secrets() -> None:
    documents = _documents(
        "--set",
        "operator.podLabels.team=data",
        "--set",
        "operator.podAnnotations.note=hi",
        "--set",
        "operator.priorityClassName=important",
        "--set",
        "imagePullSecrets[0].name=regcred",
    )
    template = _deployment(documents)["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "data"
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    assert template["metadata"]["annotations"]["note"] == "hi"
    assert template["spec"]["priorityClassName"] == "important"
    assert template["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    # Job pods run under the jobs' service account, which lends them the pull secrets.
    job_account = next(
        doc for doc in documents if doc["kind"] == "ServiceAccount" and doc["metadata"]["name"] == "rel-sessionpipe-job"
    )
    assert job_account["imagePullSecrets"] == [{"name": "regcred"}]
    assert "priorityClassName" not in _deployment(_documents())["spec"]["template"]["spec"]


def test_the_job_images_pull_policy_reaches_the_operator() -> None:
    def env(*values: str) -> dict[str, str]:
        container = _deployment(_documents(*values))["spec"]["template"]["spec"]["containers"][0]
        return {item["name"]: item.get("value", "") for item in container["env"]}

    assert env()["SESSIONPIPE_OPERATOR_JOB_IMAGE_PULL_POLICY"] == "IfNotPresent"
    assert env("--set", "image.job.pullPolicy=Always")["SESSIONPIPE_OPERATOR_JOB_IMAGE_PULL_POLICY"] == "Always"
    refused = _helm("template", "t", str(CHART), "--set", "image.job.pullPolicy=Sometimes")
    assert refused.returncode != 0 and "/image/job/pullPolicy" in refused.stderr


def _notes(tmp_path: Path, *values: str) -> str:
    """NOTES.txt as ``helm install`` prints it (``helm template`` skips it: a copy renders it as a value)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    preview = (
        '{{- define "notes.preview" -}}\n' + notes + '{{- end -}}\nnotes: {{ include "notes.preview" . | toJson }}\n'
    )
    (chart / "templates" / "notes-preview.yaml").write_text(preview)
    result = _helm("template", "rel", str(chart), "-n", "team", "--show-only", "templates/notes-preview.yaml", *values)
    assert result.returncode == 0, result.stderr
    return str(yaml.safe_load(result.stdout)["notes"])


def test_notes_follow_the_enabled_processors_and_say_how_to_see_results(tmp_path: Path) -> None:
    both = _notes(tmp_path, "--set", "processors.verification.enabled=true", "--set", "anthropic.existingSecret=k")
    for name in ("usage", "verification"):
        assert f"kubectl annotate sproc {name} -n team sessionpipe.io/run-now=" in both
        assert f"kubectl describe sproc {name} -n team" in both
    assert "sessionpipe report" in both and '"claimName":"sessionpipe-db"' in both

    none = _notes(tmp_path / "none", "--set", "processors.usage.enabled=false")
    assert "sproc usage" not in none and "made none" in none
    assert "sessionpipe report" in none


def test_job_pods_of_the_charts_processors_take_labels_annotations_and_priority() -> None:
    specs = _processor_specs(
        "--set",
        "jobs.podLabels.team=data",
        "--set",
        "jobs.podAnnotations.note=hi",
        "--set",
        "jobs.priorityClassName=batch-low",
        "--set-json",
        'processors.usage.podTemplate={"labels": {"team": "usage-team", "tier": "x"}}',
    )
    owner = {"apiVersion": "sessionpipe.io/v1alpha1", "kind": "SessionProcessor", "name": "usage", "uid": "u1"}
    for name, spec in specs.items():
        cronjob = build_cronjob(name, "ns", owner, SessionProcessorSpec.model_validate(spec), OperatorSettings())
        template = cronjob["spec"]["jobTemplate"]["spec"]["template"]
        assert template["metadata"]["annotations"]["note"] == "hi"
        assert template["spec"]["priorityClassName"] == "batch-low"
    # A processor's own podTemplate wins over the chart-wide job values, key by key (the co-location
    # label with the dashboard joins them: dashboard.colocate).
    colocated = {"sessionpipe.io/database-claim": "sessionpipe-db"}
    assert specs["usage"]["podTemplate"]["labels"] == {"team": "usage-team", "tier": "x", **colocated}
    assert specs["verification"]["podTemplate"]["labels"] == {"team": "data", **colocated}
    assert all("podTemplate" not in spec for spec in _processor_specs("--set", "dashboard.colocate=false").values())
