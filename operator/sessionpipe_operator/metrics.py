"""Prometheus metrics of the operator, served on the metrics port (``/metrics``).

Runs are counted when the operator first records a finished Job in a SessionProcessor's status, so a
restart that re-reads old Jobs does not count them twice. A reconciled SessionProcessor's run series
start at 0 (:func:`start_series`): Prometheus' ``increase()`` sees nothing of a series whose first
sample is already 1, so without them the first run of each outcome would be missing from the
Grafana dashboard and from the failed-runs alert.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, start_http_server

from sessionpipe_contract import COUNTER_LLM_COST_MICROUSD, OUTCOMES

RUNS = Counter(
    "sessionpipe_runs_total",
    "Finished runs seen by the operator, by outcome.",
    ["namespace", "sessionprocessor", "processor", "outcome"],
)
LAST_SUCCESS = Gauge(
    "sessionpipe_last_success_timestamp_seconds",
    "Unix time of the last successful run of a SessionProcessor.",
    ["namespace", "sessionprocessor", "processor"],
)
RUN_COUNTERS = Counter(
    "sessionpipe_run_counters_total",
    "What finished runs reported doing or spending (the summary's counters: llm_calls, llm_tokens...).",
    ["namespace", "sessionprocessor", "processor", "counter"],
)
LLM_COST = Counter(
    "sessionpipe_llm_cost_usd_total",
    "Dollars finished runs reported spending on LLM calls (their llm_cost_microusd counter / 1e6).",
    ["namespace", "sessionprocessor", "processor"],
)
RECONCILE_ERRORS = Counter(
    "sessionpipe_reconcile_errors_total",
    "Handler invocations that failed with an error (invalid specs are not errors).",
    ["handler"],
)
INVALID_SPECS = Counter(
    "sessionpipe_invalid_specs_total",
    "Times a SessionProcessor was found schema-valid but unworkable (InvalidSpec).",
    ["namespace", "sessionprocessor"],
)
API_REQUESTS = Counter(
    "sessionpipe_operator_api_requests_total",
    "Requests the operator's own client sent to the API server (kopf's watches and patches excluded).",
    ["verb"],
)
DRIFT_REPAIRS = Counter(
    "sessionpipe_cronjob_repairs_total",
    "CronJobs put back after they were edited or deleted by someone else.",
    ["namespace", "sessionprocessor", "kind"],
)

LEADER = Gauge(
    "sessionpipe_operator_leader",
    "1 while this operator process holds the leader Lease and acts, 0 while it waits as a standby.",
    ["identity"],
)


#: The counters every LLM processor's runs report (the verification processor's; plugins' vary).
LLM_COUNTERS = ("llm_calls", "llm_tokens", COUNTER_LLM_COST_MICROUSD)


def start_series(namespace: str, sessionprocessor: str, processor: str, uses_llm: bool) -> None:
    """Export the processor's run counts (and, with an LLM, its LLM counters) at 0 until runs add to them."""
    labels = {"namespace": namespace, "sessionprocessor": sessionprocessor, "processor": processor}
    for outcome in OUTCOMES:
        RUNS.labels(**labels, outcome=outcome)
    if uses_llm:
        for counter in LLM_COUNTERS:
            RUN_COUNTERS.labels(**labels, counter=counter)
        LLM_COST.labels(**labels)


def count_request(verb: str) -> None:
    """Hook for :class:`sessionpipe_operator.k8s.KubeClient`."""
    API_REQUESTS.labels(verb=verb).inc()


def serve(port: int, address: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> None:
    """Serve ``/metrics`` from a daemon thread; port 0 disables the endpoint."""
    if port:
        start_http_server(port, addr=address, registry=registry)
