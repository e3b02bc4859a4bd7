"""Every PromQL expression the chart ships, run against a real Prometheus scraping real metrics.

A Prometheus (Debian's package) on loopback scrapes the operator (a process, as in the operator
tests) and a ``sessionpipe serve`` on the database a real usage run wrote from the shared corpus.
Three processors run once each: ``usage`` and ``verification`` (against the Anthropic replay) succeed,
``broken`` (the replay refuses its key) fails. Then each expression of the Grafana dashboard and of
the PrometheusRule, taken from ``helm template``, must return a non-empty result whose series carry
every label its legend or annotations name; the alerts are rendered with thresholds these runs
cross, so they must fire.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sessionpipe_kubetest.cluster import ControlPlane, free_port
from sessionpipe_kubetest.volumes import bind_directory
from sessionpipe_kubetest.waiting import wait_for
from sessionpipe_operator.k8s import KubeClient, sessionprocessor_path
from tests.anthropic_replay import ReplayServer, error_reply, tool_reply
from tests.cluster.operator_support import (
    CORPUS,
    OperatorProcess,
    install_crd,
    prepare_namespace,
    sessionprocessor,
)
from tests.integration.test_chart_values import CHART, _helm
from tests.support.kubectl import apply
from tests.support.prometheus import Prometheus, Target

pytestmark = [pytest.mark.cluster, pytest.mark.images]

NEVER = "0 0 1 1 *"
LLM = {"model": "claude-sonnet-4-6", "apiKeySecretRef": {"name": "anthropic", "key": "key"}}
#: Grafana's own variables, as Grafana would fill them for a one-hour view.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__range": "1h", "$stale_after": "7200"}
RUN_SECONDS = 300


def _rendered_expressions(namespace: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Grafana dashboard and the alert rules as ``helm template`` renders them (alerts set to fire)."""
    result = _helm(
        "template",
        "mon",
        str(CHART),
        "--set",
        "monitoring.serviceMonitor.enabled=true",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.prometheusRule.staleAfterSeconds=1",
        "--set",
        "monitoring.prometheusRule.failedRuns=1",
    )
    assert result.returncode == 0, result.stderr
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    config_map = next(
        doc for doc in documents if doc["kind"] == "ConfigMap" and "grafana_dashboard" in doc["metadata"]["labels"]
    )
    rule = next(doc for doc in documents if doc["kind"] == "PrometheusRule")
    rules = [entry for group in rule["spec"]["groups"] for entry in group["rules"]]
    return json.loads(config_map["data"]["sessionpipe.json"]), rules


def _grafana_expr(expr: str, namespace: str) -> str:
    """``expr`` with the dashboard's variables filled: this namespace, every user and model."""
    filled = expr
    for name, value in {**GRAFANA_VARIABLES, "$namespace": namespace, "$user": ".*", "$model": ".*"}.items():
        filled = filled.replace(name, value)
    assert "$" not in filled, f"a variable the test does not fill: {filled}"
    return filled


def _legend_labels(template: str) -> set[str]:
    return set(re.findall(r"\{\{\s*\$?(?:labels\.)?([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", template)) - {"value"}


def _shape_problem(result: dict[str, Any], labels: set[str], expected_type: str) -> str | None:
    """Why ``result`` is not a non-empty ``expected_type`` whose series all carry ``labels``; None if it is."""
    if result["resultType"] != expected_type:
        return f"a {result['resultType']}, not a {expected_type}"
    if not result["result"]:
        return "no series"
    missing = [series["metric"] for series in result["result"] if not labels <= set(series["metric"])]
    return f"series without {sorted(labels)}: {missing}" if missing else None


class Serve:
    """``sessionpipe serve`` on a database file, on a free port of 127.0.0.1."""

    def __init__(self, database: Path, log_path: Path) -> None:
        self.port = free_port()
        self.database = database
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except OSError:
            return 0, b""

    @property
    def command(self) -> list[str]:
        executable = Path(sys.executable).with_name("sessionpipe")
        return [str(executable), "serve", "--db", str(self.database), "--port", str(self.port)]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    database_dir = tmp_path / "warehouse"
    database_dir.mkdir()
    database_dir.chmod(0o777)  # the job image's user (10001) writes the database
    server = Serve(database_dir / "usage.duckdb", tmp_path / "serve.log")
    with server.log_path.open("ab") as log:
        process = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "--", *server.command],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: server.get("/healthz")[0] != 0, 60, f"sessionpipe serve to answer (log {server.log_path})")
        yield server
    finally:
        process.terminate()
        process.wait(20)


def _run(control_plane: ControlPlane, kube: KubeClient, namespace: str, names: list[str]) -> dict[str, str]:
    """Run each processor now, at once; each one's outcome once the operator recorded it."""
    for name in names:
        control_plane.kubectl("annotate", "sproc", name, "sessionpipe.io/run-now=once", namespace=namespace)

    def outcomes() -> dict[str, str] | None:
        found = {}
        for name in names:
            body = kube.get(sessionprocessor_path(namespace, name)) or {}
            outcome = ((body.get("status") or {}).get("lastRun") or {}).get("outcome")
            if not outcome:
                return None
            found[name] = str(outcome)
        return found

    return wait_for(outcomes, RUN_SECONDS, f"runs of {names} to be recorded", interval=1)


def test_every_promql_expression_of_the_grafana_dashboard_and_the_alerts_returns_data(
    control_plane: ControlPlane, namespace: str, k8s_api: Any, tmp_path: Path, serve: Serve
) -> None:
    install_crd(control_plane)
    operator = OperatorProcess(control_plane, tmp_path / "operator")
    operator.start()
    prometheus = Prometheus(
        tmp_path / "prometheus",
        {
            # The run metrics carry their own namespace label, as the chart's ServiceMonitor keeps it.
            "operator": Target(operator.metrics_port, honor_labels=True),
            "dashboard": Target(serve.port),
        },
    )
    (tmp_path / "prometheus").mkdir()
    kube = KubeClient(k8s_api)
    try:
        with (
            prometheus.running(),
            ReplayServer(responder=lambda _: tool_reply([])).running() as good,
            ReplayServer(
                responder=lambda _: error_reply(401, "authentication_error", "invalid x-api-key")
            ).running() as refusing,
        ):
            prepare_namespace(control_plane, namespace)
            warehouse = serve.database.parent
            bind_directory(control_plane, namespace, "transcripts", CORPUS, read_only=True)
            bind_directory(control_plane, namespace, "warehouse", warehouse)
            control_plane.kubectl(
                "create", "secret", "generic", "anthropic", "--from-literal=key=sk-ant-test", namespace=namespace
            )
            common = {"schedule": NEVER, "sessions": {"claimName": "transcripts", "subPath": "sniffly"}}
            specs = {
                "usage": {"processor": "usage", "database": {"claimName": "warehouse", "path": "usage.duckdb"}},
                "verification": {
                    "processor": "verification",
                    "database": {"claimName": "warehouse", "path": "verification.duckdb"},
                    "llm": LLM,
                    "config": {"base_url": good.url},
                },
                "broken": {
                    "processor": "verification",
                    "database": {"claimName": "warehouse", "path": "broken.duckdb"},
                    "llm": LLM,
                    "config": {"base_url": refusing.url},
                },
            }
            for name, spec in specs.items():
                apply(control_plane, namespace, sessionprocessor(name, {**common, **spec}))
            # Prometheus has seen every processor's run series at 0 before any run adds to them.
            wait_for(
                lambda: len(prometheus.query(f'sessionpipe_runs_total{{namespace="{namespace}"}}')["result"]) >= 21,
                60,
                "the processors' run series at 0",
                interval=0.5,
            )
            outcomes = _run(control_plane, kube, namespace, list(specs))
            assert outcomes == {"usage": "succeeded", "verification": "succeeded", "broken": "failed"}, outcomes
            wait_for(lambda: serve.get("/healthz")[0] == 200, 60, "the dashboard to serve the run's snapshot")
            totals = json.loads(serve.get("/api/usage?by=model")[1])["totals"]
            _check_every_expression(prometheus, namespace, totals)
    finally:
        operator.stop()
        print(f"\n[operator] log: {operator.log_path}\n[prometheus] log: {prometheus.log_path}")


def _check_every_expression(prometheus: Prometheus, namespace: str, totals: dict[str, Any]) -> None:
    dashboard, rules = _rendered_expressions(namespace)
    checks: list[tuple[str, str, set[str], bool]] = []  # (what, expr, labels, instant)
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            legend = target.get("legendFormat", "")
            what = f"panel {panel['title']!r}"
            checks.append(
                (what, _grafana_expr(target["expr"], namespace), _legend_labels(legend), target.get("instant", False))
            )
    for rule in rules:
        used = set().union(*(_legend_labels(text) for text in rule["annotations"].values()))
        checks.append((f"alert {rule['alert']}", rule["expr"], used, True))
    assert len(checks) >= 16, checks

    def problems() -> list[str]:
        found = []
        for what, expr, labels, instant in checks:
            result = prometheus.query(expr) if instant else prometheus.query_range(expr, 20)
            problem = _shape_problem(result, labels, "vector" if instant else "matrix")
            if problem:
                found.append(f"{what}: {expr}\n  {problem}")
        return found

    # Rates need two scrapes after the runs: give Prometheus a few seconds, then every one must hold.
    deadline = time.monotonic() + 60
    while (remaining := problems()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not remaining, "\n".join(remaining)

    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"])
            assert match, variable["query"]
            assert prometheus.label_values(match.group(2), match.group(1)), f"variable {variable['name']}: no values"

    # The numbers are the runs' own: each processor's first run counted, the usage totals the report's.
    increases = 'increase(sessionpipe_runs_total{namespace=~"$namespace"}[$__range])'
    counted_runs = _grafana_expr(f"sum by (sessionprocessor, outcome) ({increases}) > 0", namespace)
    expected = {("usage", "succeeded"), ("verification", "succeeded"), ("broken", "failed")}

    def counted() -> set[tuple[str, str]]:
        runs = prometheus.query(counted_runs)["result"]
        return {(s["metric"]["sessionprocessor"], s["metric"]["outcome"]) for s in runs}

    # The operator writes a run's status just before it counts it: the last run may need one more scrape.
    deadline = time.monotonic() + 30
    while (found := counted()) != expected and time.monotonic() < deadline:
        time.sleep(1)
    assert found == expected
    cost = prometheus.query("sum(sessionpipe_usage_cost_usd_total)")["result"][0]["value"][1]
    tokens = prometheus.query("sum(sessionpipe_usage_tokens_total)")["result"][0]["value"][1]
    assert float(cost) == pytest.approx(totals["totalCost"], rel=1e-9)
    assert int(float(tokens)) == totals["totalTokens"] > 0
    selector = f'namespace="{namespace}", sessionprocessor="verification", counter="llm_calls"'
    calls = prometheus.query(f"sessionpipe_run_counters_total{{{selector}}}")["result"]
    assert calls and float(calls[0]["value"][1]) >= 1
