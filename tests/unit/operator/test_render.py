"""The CronJob a SessionProcessor becomes, the run-now Job made from it, and drift detection."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from sessionpipe_contract import (
    ANNOTATION_RUN_NOW_TOKEN,
    EXIT_LEASE_NOT_ACQUIRED,
    LABEL_DATABASE,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_PROCESSOR,
    LABEL_RUN_KIND,
)
from sessionpipe_operator.models import SessionProcessorSpec
from sessionpipe_operator.render import (
    build_cronjob,
    build_run_now_job,
    cronjob_drifted,
    database_key,
    lease_name_for,
)
from sessionpipe_operator.settings import OperatorSettings

OWNER = {"apiVersion": "sessionpipe.io/v1alpha1", "kind": "SessionProcessor", "name": "verify", "uid": "uid-cr-1"}
SETTINGS = OperatorSettings(job_image="registry.example/sessionpipe-job:7", job_service_account="sessionpipe-job")
FULL_SPEC: dict[str, Any] = {
    "processor": "verification",
    "schedule": "every 15m",
    "timeZone": "Europe/Berlin",
    "suspend": True,
    "sessions": {"claimName": "transcripts", "subPath": "team-a"},
    "database": {"claimName": "warehouse", "path": "./reports/verify.duckdb", "leaseWaitSeconds": 120},
    "run": {"timeoutSeconds": 1200, "maxSessionsPerRun": 50, "maxAttemptsPerSession": 4, "startingDeadlineSeconds": 60},
    "history": {"successful": 1, "failed": 5},
    "llm": {
        "model": "claude-sonnet-4-5",
        "apiKeySecretRef": {"name": "anthropic", "key": "api-key"},
        "maxTokensPerRun": 500,
    },
    "config": {"max_turns": 40, "nested": {"a": [1, 2]}},
    "resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"memory": "2Gi"}},
    "podTemplate": {
        "labels": {"team": "a", LABEL_PROCESSOR: "spoofed"},
        "annotations": {"example.com/owner": "team-a"},
        "priorityClassName": "batch-low",
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
    },
}
MINIMAL_SPEC: dict[str, Any] = {
    "processor": "usage",
    "schedule": "@hourly",
    "sessions": {"claimName": "transcripts"},
    "database": {"claimName": "warehouse"},
}


def render(spec: dict[str, Any], settings: OperatorSettings = SETTINGS, name: str = "verify") -> dict[str, Any]:
    return build_cronjob(name, "team-a", OWNER, SessionProcessorSpec.model_validate(spec), settings)


def pod_spec(cronjob: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def env_of(cronjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in pod_spec(cronjob)["containers"][0]["env"]}


def test_cronjob_never_overlaps_and_follows_the_spec() -> None:
    cronjob = render(FULL_SPEC)
    assert (cronjob["apiVersion"], cronjob["kind"]) == ("batch/v1", "CronJob")
    assert (cronjob["metadata"]["name"], cronjob["metadata"]["namespace"]) == ("verify", "team-a")
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["schedule"] == "*/15 * * * *"  # the shorthand, as cron
    assert spec["timeZone"] == "Europe/Berlin"
    assert spec["suspend"] is True
    assert spec["startingDeadlineSeconds"] == 60
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (1, 5)


def test_defaults_fill_a_minimal_spec() -> None:
    spec = render(MINIMAL_SPEC)["spec"]
    assert spec["schedule"] == "@hourly"
    assert "timeZone" not in spec
    assert spec["suspend"] is False
    assert spec["startingDeadlineSeconds"] == 300
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (3, 3)
    assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 900


def test_job_fails_fast_on_a_held_lease_ignores_disruptions_and_never_overlaps_its_replacement() -> None:
    job = render(FULL_SPEC)["spec"]["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == 1200
    assert job["backoffLimit"] == 0
    assert job["podReplacementPolicy"] == "Failed"
    rules = job["podFailurePolicy"]["rules"]
    fail_job = [rule for rule in rules if rule["action"] == "FailJob"]
    assert [rule["onExitCodes"] for rule in fail_job] == [
        {"containerName": "runner", "operator": "In", "values": [EXIT_LEASE_NOT_ACQUIRED]}
    ]
    ignore = [rule for rule in rules if rule["action"] == "Ignore"]
    assert [rule["onPodConditions"] for rule in ignore] == [[{"type": "DisruptionTarget", "status": "True"}]]
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_pod_runs_under_the_restricted_pod_security_profile() -> None:
    pod = pod_spec(render(FULL_SPEC))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["command"] == ["sessionpipe", "run"]
    assert "privileged" not in context


def test_environment_tells_the_runner_everything_and_the_api_key_comes_only_from_the_secret() -> None:
    cronjob = render(FULL_SPEC)
    env = env_of(cronjob)
    values = {name: variable.get("value") for name, variable in env.items()}
    assert values["SESSIONPIPE_PROCESSOR"] == "verification"
    assert values["SESSIONPIPE_SESSIONS"] == "/data/sessions"
    assert values["SESSIONPIPE_DB"] == "/data/db/reports/verify.duckdb"
    assert values["SESSIONPIPE_LEASE_WAIT"] == "120"
    assert values["SESSIONPIPE_MAX_SESSIONS"] == "50"
    assert values["SESSIONPIPE_MAX_ATTEMPTS"] == "4"
    assert json.loads(str(values["SESSIONPIPE_CONFIG"])) == FULL_SPEC["config"]
    assert values["SESSIONPIPE_LLM_MODEL"] == "claude-sonnet-4-5"
    assert values["SESSIONPIPE_LLM_MAX_TOKENS_PER_RUN"] == "500"
    assert values["TMPDIR"] == "/tmp"
    assert values["SESSIONPIPE_LEASE"] == f"k8s:{lease_name_for(SessionProcessorSpec.model_validate(FULL_SPEC))}"
    assert env["ANTHROPIC_API_KEY"] == {
        "name": "ANTHROPIC_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "anthropic", "key": "api-key"}},
    }
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # Nothing else reads a Secret, and no plain value carries anything that looks like a key.
    secret_refs = [name for name, variable in env.items() if "secretKeyRef" in (variable.get("valueFrom") or {})]
    assert secret_refs == ["ANTHROPIC_API_KEY"]
    assert "sk-ant" not in json.dumps(cronjob)


def test_no_llm_settings_means_no_llm_environment() -> None:
    env = env_of(render(MINIMAL_SPEC))
    assert not {"ANTHROPIC_API_KEY", "SESSIONPIPE_LLM_MODEL", "SESSIONPIPE_LLM_MAX_TOKENS_PER_RUN"} & set(env)
    assert env["SESSIONPIPE_DB"]["value"] == "/data/db/sessionpipe.duckdb"
    assert env["SESSIONPIPE_CONFIG"]["value"] == "{}"


def test_sessions_are_mounted_read_only_from_their_sub_path() -> None:
    pod = pod_spec(render(FULL_SPEC))
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount for mount in pod["containers"][0]["volumeMounts"]}
    assert volumes["sessions"]["persistentVolumeClaim"] == {"claimName": "transcripts", "readOnly": True}
    assert mounts["sessions"] == {
        "name": "sessions",
        "mountPath": "/data/sessions",
        "readOnly": True,
        "subPath": "team-a",
    }
    assert volumes["database"]["persistentVolumeClaim"] == {"claimName": "warehouse"}
    assert mounts["database"]["mountPath"] == "/data/db"
    assert not mounts["database"].get("readOnly")
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert (
        "subPath"
        not in {mount["name"]: mount for mount in pod_spec(render(MINIMAL_SPEC))["containers"][0]["volumeMounts"]}[
            "sessions"
        ]
    )


def test_a_pricing_configmap_is_mounted_read_only_and_named_by_sessionpipe_pricing() -> None:
    pod = pod_spec(render({**MINIMAL_SPEC, "pricing": {"configMapRef": {"name": "prices", "key": "litellm.json"}}}))
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount for mount in pod["containers"][0]["volumeMounts"]}
    assert volumes["pricing"]["configMap"] == {
        "name": "prices",
        "items": [{"key": "litellm.json", "path": "pricing.json"}],
    }
    assert mounts["pricing"] == {"name": "pricing", "mountPath": "/etc/sessionpipe/pricing", "readOnly": True}
    env = {variable["name"]: variable for variable in pod["containers"][0]["env"]}
    assert env["SESSIONPIPE_PRICING"]["value"] == "/etc/sessionpipe/pricing/pricing.json"
    default_key = pod_spec(render({**MINIMAL_SPEC, "pricing": {"configMapRef": {"name": "prices"}}}))
    assert {v["name"]: v for v in default_key["volumes"]}["pricing"]["configMap"]["items"][0]["key"] == "pricing.json"
    # without spec.pricing the job image's shipped prices apply: no volume, no variable
    plain = pod_spec(render(MINIMAL_SPEC))
    assert "pricing" not in {volume["name"] for volume in plain["volumes"]}
    assert "SESSIONPIPE_PRICING" not in {variable["name"] for variable in plain["containers"][0]["env"]}


def test_cronjob_is_owned_by_the_sessionprocessor_and_labelled_for_watches_and_dashboards() -> None:
    cronjob = render(FULL_SPEC)
    assert cronjob["metadata"]["ownerReferences"] == [{**OWNER, "controller": True, "blockOwnerDeletion": True}]
    key = database_key("warehouse", "reports/verify.duckdb")
    for labels in (
        cronjob["metadata"]["labels"],
        cronjob["spec"]["jobTemplate"]["metadata"]["labels"],
        cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"],
    ):
        assert labels[LABEL_INSTANCE] == "verify"
        assert labels[LABEL_PROCESSOR] == "verification"  # the user's podTemplate label cannot spoof it
        assert labels[LABEL_DATABASE] == key
        assert labels[LABEL_MANAGED_BY] == "sessionpipe-operator"
    assert cronjob["spec"]["jobTemplate"]["metadata"]["labels"][LABEL_RUN_KIND] == "scheduled"
    pod_metadata = cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]
    assert pod_metadata["labels"]["team"] == "a"
    assert pod_metadata["annotations"] == {"example.com/owner": "team-a"}


def test_pod_placement_and_sizing_come_from_the_spec() -> None:
    pod = pod_spec(render(FULL_SPEC))
    assert pod["nodeSelector"] == {"disk": "ssd"}
    assert pod["tolerations"] == FULL_SPEC["podTemplate"]["tolerations"]
    assert pod["affinity"] == FULL_SPEC["podTemplate"]["affinity"]
    assert pod["containers"][0]["resources"] == FULL_SPEC["resources"]
    assert pod["priorityClassName"] == "batch-low"
    minimal = pod_spec(render(MINIMAL_SPEC))
    assert not {"nodeSelector", "tolerations", "affinity", "priorityClassName"} & set(minimal)
    assert "resources" not in minimal["containers"][0]


def test_image_and_service_account_default_to_the_operators_settings() -> None:
    pod = pod_spec(render(MINIMAL_SPEC))
    assert pod["containers"][0]["image"] == "registry.example/sessionpipe-job:7"
    assert pod["serviceAccountName"] == "sessionpipe-job"
    own = pod_spec(render({**MINIMAL_SPEC, "image": "mine:1", "serviceAccountName": "reader"}))
    assert (own["containers"][0]["image"], own["serviceAccountName"]) == ("mine:1", "reader")
    assert "serviceAccountName" not in pod_spec(render(MINIMAL_SPEC, OperatorSettings()))


def test_database_key_names_one_file_however_it_is_spelled() -> None:
    key = database_key("warehouse", "usage.duckdb")
    assert key == database_key("warehouse", "./usage.duckdb") == database_key("warehouse", "a/../usage.duckdb")
    assert key != database_key("warehouse", "other.duckdb")
    assert key != database_key("archive", "usage.duckdb")
    assert re.fullmatch(r"[a-z0-9]{1,63}", key)  # a valid label value


def test_lease_name_is_shared_by_writers_of_one_file_unless_named() -> None:
    first = SessionProcessorSpec.model_validate(MINIMAL_SPEC)
    second = SessionProcessorSpec.model_validate({**MINIMAL_SPEC, "processor": "verification"})
    assert lease_name_for(first) == lease_name_for(second)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", lease_name_for(first))
    named = SessionProcessorSpec.model_validate(
        {**MINIMAL_SPEC, "database": {"claimName": "w", "leaseName": "my-lease"}}
    )
    assert lease_name_for(named) == "my-lease"


def test_an_inexact_shorthand_is_not_rendered() -> None:
    from sessionpipe_operator.schedule import InvalidSchedule

    with pytest.raises(InvalidSchedule, match="7"):
        render({**MINIMAL_SPEC, "schedule": "every 7m"})


def as_stored(cronjob: dict[str, Any]) -> dict[str, Any]:
    """``cronjob`` as the API server returns it: defaults filled in, quantities canonical, status added."""
    stored = copy.deepcopy(cronjob)
    stored["metadata"].update({"uid": "uid-cj-9", "resourceVersion": "42", "generation": 1, "creationTimestamp": "t"})
    stored["metadata"]["labels"]["added-by-someone"] = "x"
    job = stored["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    pod.update({"dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler", "terminationGracePeriodSeconds": 30})
    container = pod["containers"][0]
    container["imagePullPolicy"] = "IfNotPresent"
    for variable in container["env"]:
        field_ref = (variable.get("valueFrom") or {}).get("fieldRef")
        if field_ref:
            field_ref["apiVersion"] = "v1"
    affinity = pod.get("affinity") or {}
    for kind in affinity.values():  # empty lists are omitted when the object is stored
        for key in [key for key, value in kind.items() if value == []]:
            del kind[key]
    if "resources" in container:
        container["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    stored["status"] = {"lastScheduleTime": "2026-01-01T00:00:00Z"}
    return stored


def test_a_stored_cronjob_with_server_defaults_has_not_drifted() -> None:
    desired = render(FULL_SPEC)
    assert not cronjob_drifted(desired, as_stored(desired))
    minimal = render(MINIMAL_SPEC)
    assert not cronjob_drifted(minimal, as_stored(minimal))


def _edit(path: str, value: Any) -> Any:
    def change(stored: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        target: Any = stored
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is DELETE:
            del target[leaf]
        else:
            target[leaf] = value

    return change


DELETE = object()
POD = "spec.jobTemplate.spec.template.spec"
EDITS = {
    "schedule": _edit("spec.schedule", "* * * * *"),
    "concurrency policy": _edit("spec.concurrencyPolicy", "Allow"),
    "suspend": _edit("spec.suspend", False),
    "history": _edit("spec.successfulJobsHistoryLimit", 10),
    "deadline": _edit("spec.jobTemplate.spec.activeDeadlineSeconds", 99999),
    "pod failure policy": _edit("spec.jobTemplate.spec.podFailurePolicy", DELETE),
    "image": _edit(f"{POD}.containers.0.image", "evil:latest"),
    "an env var removed": lambda stored: stored["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0][
        "env"
    ].pop(),
    "an env var added": lambda stored: stored["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0][
        "env"
    ].append({"name": "EXTRA", "value": "1"}),
    "read-only sessions": _edit(f"{POD}.containers.0.volumeMounts.0.readOnly", False),
    "memory limit": _edit(f"{POD}.containers.0.resources", {"limits": {"memory": "3Gi"}, "requests": {"cpu": "1"}}),
    "security context": _edit(f"{POD}.containers.0.securityContext.readOnlyRootFilesystem", False),
    "owner": _edit("metadata.ownerReferences", []),
    "instance label": _edit("metadata.labels", {"app.kubernetes.io/managed-by": "sessionpipe-operator"}),
    "pod label added": lambda stored: stored["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"].update(
        {"extra": "1"}
    ),
    "node selector removed": _edit(f"{POD}.nodeSelector", DELETE),
}


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_an_edited_cronjob_has_drifted(edit: str) -> None:
    desired = render(FULL_SPEC)
    stored = as_stored(desired)
    EDITS[edit](stored)
    assert cronjob_drifted(desired, stored)


def test_fields_the_spec_dropped_are_drift_while_they_linger() -> None:
    before = as_stored(render(FULL_SPEC))
    after = render({**FULL_SPEC, "timeZone": None, "podTemplate": None})
    assert cronjob_drifted(after, before)
    assert not cronjob_drifted(after, as_stored(after))


def test_run_now_job_is_the_cronjobs_template_owned_by_the_cronjob() -> None:
    stored = as_stored(render(FULL_SPEC))
    original = copy.deepcopy(stored)
    job = build_run_now_job(stored, "token-123")
    assert stored == original  # the CronJob is not modified
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    metadata = job["metadata"]
    assert metadata["generateName"] == "verify-now-"
    assert "name" not in metadata
    assert metadata["namespace"] == "team-a"
    assert metadata["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "name": "verify",
            "uid": "uid-cj-9",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert metadata["annotations"][ANNOTATION_RUN_NOW_TOKEN] == "token-123"
    assert metadata["labels"][LABEL_RUN_KIND] == "run-now"
    assert metadata["labels"][LABEL_INSTANCE] == "verify"
    pod_template = job["spec"]["template"]
    assert pod_template["metadata"]["labels"][LABEL_RUN_KIND] == "run-now"
    # Everything else is the CronJob's template: same limits, same pod.
    template = original["spec"]["jobTemplate"]["spec"]
    for field in ("activeDeadlineSeconds", "backoffLimit", "podFailurePolicy", "podReplacementPolicy"):
        assert job["spec"][field] == template[field]
    assert pod_template["spec"] == template["template"]["spec"]
    # The generated name stays a valid Job name (and label value) for the longest CR name.
    longest = build_run_now_job(as_stored(render(MINIMAL_SPEC, name="x" * 52)), "t")
    assert len(longest["metadata"]["generateName"]) + 5 <= 63


def test_run_now_needs_the_cronjob_the_api_server_returned() -> None:
    with pytest.raises(ValueError, match="uid"):
        build_run_now_job(render(MINIMAL_SPEC), "token")


def test_operator_settings_come_from_the_environment_with_defaults() -> None:
    defaults = OperatorSettings.from_env({})
    assert defaults == OperatorSettings()
    assert (defaults.namespaces, defaults.log_format, defaults.health_port, defaults.metrics_port) == (
        (),
        "plain",
        8080,
        9090,
    )
    settings = OperatorSettings.from_env(
        {
            "SESSIONPIPE_OPERATOR_JOB_IMAGE": "registry.example/job:2",
            "SESSIONPIPE_OPERATOR_JOB_SERVICE_ACCOUNT": "sessionpipe-job",
            "SESSIONPIPE_OPERATOR_NAMESPACES": " team-a, team-b ,,team-a",
            "SESSIONPIPE_OPERATOR_LOG_FORMAT": "JSON",
            "SESSIONPIPE_OPERATOR_HEALTH_PORT": "8081",
            "SESSIONPIPE_OPERATOR_METRICS_PORT": "9091",
        }
    )
    assert settings == OperatorSettings(
        "registry.example/job:2", "sessionpipe-job", ("team-a", "team-b"), "json", 8081, 9091
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SESSIONPIPE_OPERATOR_HEALTH_PORT", "eighty"),
        ("SESSIONPIPE_OPERATOR_METRICS_PORT", "70000"),
        ("SESSIONPIPE_OPERATOR_HEALTH_PORT", "9090"),  # the same as the metrics port
        ("SESSIONPIPE_OPERATOR_LOG_FORMAT", "xml"),
        ("SESSIONPIPE_OPERATOR_NAMESPACES", "team-a,Team_B"),
        ("SESSIONPIPE_OPERATOR_JOB_SERVICE_ACCOUNT", "Not A Name"),
        ("SESSIONPIPE_OPERATOR_JOB_IMAGE", "two words"),
        ("SESSIONPIPE_OPERATOR_JOB_IMAGE_PULL_POLICY", "Sometimes"),
    ],
)
def test_a_bad_operator_setting_is_refused_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        OperatorSettings.from_env({variable: value})


def test_the_job_containers_pull_policy_and_log_format_follow_the_operators_settings() -> None:
    settings = OperatorSettings.from_env(
        {"SESSIONPIPE_OPERATOR_JOB_IMAGE_PULL_POLICY": "Always", "SESSIONPIPE_OPERATOR_LOG_FORMAT": "json"}
    )
    container = pod_spec(render(MINIMAL_SPEC, settings))["containers"][0]
    assert container["imagePullPolicy"] == "Always"
    assert env_of(render(MINIMAL_SPEC, settings))["SESSIONPIPE_LOG_FORMAT"]["value"] == "json"
    plain = render(MINIMAL_SPEC, OperatorSettings())
    assert "imagePullPolicy" not in pod_spec(plain)["containers"][0]  # Kubernetes' own default
    assert env_of(plain)["SESSIONPIPE_LOG_FORMAT"]["value"] == "plain"
