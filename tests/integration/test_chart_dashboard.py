"""The chart's dashboard and monitoring without a cluster: what `helm template` renders for them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sessionpipe_operator.models import SessionProcessorSpec
from sessionpipe_operator.render import build_cronjob
from sessionpipe_operator.settings import OperatorSettings
from tests.integration.test_chart_values import CHART, _helm, _notes

COLOCATION = "sessionpipe.io/database-claim"
OWNER = {"apiVersion": "sessionpipe.io/v1alpha1", "kind": "SessionProcessor", "name": "p", "uid": "u1"}
MONITORING_ON = ("--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.prometheusRule.enabled=true")


def _render(*values: str) -> list[dict[str, Any]]:
    import yaml

    result = _helm("template", "rel", str(CHART), "-n", "ns", *values)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name), None)


def _dashboard(documents: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = _find(documents, "Deployment", "rel-sessionpipe-dashboard")
    assert deployment is not None, "no dashboard Deployment"
    return deployment


def _job_pods(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pod template the operator renders for each SessionProcessor of the chart."""
    pods = {}
    for doc in documents:
        if doc["kind"] == "SessionProcessor":
            spec = SessionProcessorSpec.model_validate(doc["spec"])
            cronjob = build_cronjob(doc["metadata"]["name"], "ns", OWNER, spec, OperatorSettings())
            pods[doc["metadata"]["name"]] = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    return pods


def test_the_dashboard_serves_the_database_snapshot_read_only_from_the_job_image() -> None:
    documents = _render("--set", "image.job.repository=registry.example/job", "--set", "image.job.tag=v7")
    pod = _dashboard(documents)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/job:v7"
    assert container["command"] == [
        "sessionpipe",
        "serve",
        "--db",
        "/data/db/sessionpipe.duckdb",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    claim = next(v for v in pod["volumes"] if v["name"] == "database")["persistentVolumeClaim"]
    assert claim == {"claimName": "sessionpipe-db", "readOnly": True}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "database")
    assert mount == {"name": "database", "mountPath": "/data/db", "readOnly": True}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "livenessProbe" in container and container["resources"]["limits"]["memory"]
    assert pod["automountServiceAccountToken"] is False
    service = _find(documents, "Service", "rel-sessionpipe-dashboard")
    assert service is not None and service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]
    labels = _dashboard(documents)["spec"]["template"]["metadata"]["labels"]
    assert all(labels[key] == value for key, value in service["spec"]["selector"].items())


def test_the_dashboard_path_and_port_follow_the_values() -> None:
    documents = _render("--set", "dashboard.databasePath=/team//./usage.duckdb", "--set", "dashboard.port=8123")
    command = _dashboard(documents)["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[3] == "/data/db/team/usage.duckdb" and command[-1] == "8123"


def test_the_dashboard_runs_under_the_restricted_security_context_of_the_job_pods() -> None:
    documents = _render()
    pod = _dashboard(documents)["spec"]["template"]["spec"]
    job_pod = _job_pods(documents)["usage"]["spec"]
    for key in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile"):
        assert pod["securityContext"][key] == job_pod["securityContext"][key], key
    container = pod["containers"][0]["securityContext"]
    assert container == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]


def test_the_dashboard_and_the_job_pods_on_its_claim_share_a_label_and_require_one_node() -> None:
    documents = _render(
        "--set",
        "processors.verification.enabled=true",
        "--set",
        "anthropic.existingSecret=k",
        "--set-json",
        'processors.verification.database={"claimName": "elsewhere"}',
    )
    dashboard = _dashboard(documents)["spec"]["template"]
    term = {
        "labelSelector": {"matchLabels": {COLOCATION: "sessionpipe-db"}},
        "topologyKey": "kubernetes.io/hostname",
    }
    assert dashboard["metadata"]["labels"][COLOCATION] == "sessionpipe-db"
    assert dashboard["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == [term]
    pods = _job_pods(documents)
    usage = pods["usage"]
    assert usage["metadata"]["labels"][COLOCATION] == "sessionpipe-db"
    assert usage["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == [term]
    # A processor writing to another claim has nothing to share with the dashboard.
    assert COLOCATION not in pods["verification"]["metadata"]["labels"]
    assert "affinity" not in pods["verification"]["spec"]


def test_without_colocate_or_without_the_dashboard_nothing_is_pinned() -> None:
    for values in (["--set", "dashboard.colocate=false"], ["--set", "dashboard.enabled=false"]):
        documents = _render(*values)
        pod = _job_pods(documents)["usage"]
        assert COLOCATION not in pod["metadata"]["labels"] and "affinity" not in pod["spec"]
    dashboard = _dashboard(_render("--set", "dashboard.colocate=false"))["spec"]["template"]
    assert "affinity" not in dashboard["spec"] and COLOCATION not in dashboard["metadata"]["labels"]


def test_the_dashboard_can_be_turned_off() -> None:
    documents = _render("--set", "dashboard.enabled=false")
    assert not [d for d in documents if "dashboard" in d["metadata"]["name"] and d["kind"] != "ConfigMap"]
    assert _find(documents, "Deployment", "rel-sessionpipe-operator") is not None


def test_a_database_claim_only_one_pod_may_mount_is_refused_with_the_dashboard_on() -> None:
    result = _helm("template", "rel", str(CHART), "--set", "storage.database.accessModes={ReadWriteOncePod}")
    assert result.returncode != 0 and "ReadWriteOncePod" in result.stderr, result.stderr
    assert _render("--set", "storage.database.accessModes={ReadWriteOncePod}", "--set", "dashboard.enabled=false")


def test_the_ingress_is_off_by_default_and_routes_to_the_service_when_on() -> None:
    assert not [d for d in _render() if d["kind"] == "Ingress"]
    documents = _render(
        "--set",
        "dashboard.ingress.enabled=true",
        "--set",
        "dashboard.ingress.host=usage.example",
        "--set",
        "dashboard.ingress.className=nginx",
    )
    ingress = _find(documents, "Ingress", "rel-sessionpipe-dashboard")
    assert ingress is not None and ingress["spec"]["ingressClassName"] == "nginx"
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "usage.example"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "rel-sessionpipe-dashboard", "port": {"name": "http"}}


def test_the_grafana_dashboard_is_a_configmap_the_sidecar_loads() -> None:
    documents = _render()
    config_map = _find(documents, "ConfigMap", "rel-sessionpipe-grafana-dashboard")
    assert config_map is not None
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["sessionpipe.json"])
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Runs by outcome", "Time since last success", "Stale processors", "LLM calls", "LLM tokens"} <= titles
    assert {"Cost by user", "Cost by model", "Tokens by type"} <= titles
    off = _render("--set", "monitoring.grafanaDashboard.enabled=false")
    assert _find(off, "ConfigMap", "rel-sessionpipe-grafana-dashboard") is None


def test_service_monitors_and_alert_rules_are_off_by_default_and_rendered_when_on() -> None:
    kinds = {"ServiceMonitor", "PrometheusRule"}
    assert not [d for d in _render() if d["kind"] in kinds]
    documents = _render(*MONITORING_ON, "--set", "monitoring.serviceMonitor.labels.release=kps")
    monitors = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"rel-sessionpipe-operator", "rel-sessionpipe-dashboard"}
    for name, monitor in monitors.items():
        assert monitor["metadata"]["labels"]["release"] == "kps"
        # Each selects a Service of the release that has the port it names.
        port = monitor["spec"]["endpoints"][0]["port"]
        selected = [
            d
            for d in documents
            if d["kind"] == "Service"
            and all(d["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
        ]
        assert [p["name"] for s in selected for p in s["spec"]["ports"]] == [port], name
    # The run metrics carry their own namespace label: the scrape must keep it.
    assert monitors["rel-sessionpipe-operator"]["spec"]["endpoints"][0]["honorLabels"] is True
    rules = next(d for d in documents if d["kind"] == "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} == {"SessionpipeProcessorStale", "SessionpipeRunsFailing"}


def test_notes_say_how_to_open_the_dashboard_and_read_a_report_without_it(tmp_path: Path) -> None:
    notes = _notes(tmp_path / "on", "--set", "dashboard.databasePath=team/usage.duckdb")
    assert "kubectl port-forward -n team svc/rel-sessionpipe-dashboard 8000\n" in notes
    assert "http://127.0.0.1:8000" in notes
    command = "kubectl exec -n team deploy/rel-sessionpipe-dashboard -- sessionpipe report usage"
    assert f"{command} --db /data/db/team/usage.duckdb" in notes
    moved = _notes(tmp_path / "port", "--set", "dashboard.service.port=80")
    assert "svc/rel-sessionpipe-dashboard 8000:80" in moved
    off = _notes(tmp_path / "off", "--set", "dashboard.enabled=false")
    assert "port-forward" not in off and "kubectl run sessionpipe-report" in off
