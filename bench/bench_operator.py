"""Benchmark: 200 SessionProcessors applied at once against a real, local control plane.

Prints, as JSON and as a short table:

- seconds from ``kubectl apply`` (one List of 200 CRs) until all 200 CronJobs exist, and until every
  CR's status is written (``observedGeneration`` set);
- the operator's peak resident set size (``VmHWM``) over the whole run;
- API requests per minute while idle afterwards, from the API server's own ``apiserver_request_total``
  counters: with the operator running, and for the same control plane with the operator stopped (the
  peer: kube-controller-manager and the pod executor alone), plus the operator's own client count.

Run: ``.venv/bin/python -m bench.bench_operator [--count 200] [--idle-seconds 60]``. It starts its own
control plane (binaries from ``make controlplane``) in a temporary folder and stops it at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from sessionpipe_contract import API_GROUP, API_VERSION, KIND
from sessionpipe_kubetest.cluster import ControlPlane
from sessionpipe_kubetest.waiting import wait_for
from tests.cluster.operator_support import OperatorProcess, install_crd, prepare_namespace

REQUEST_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


def apiserver_requests(plane: ControlPlane) -> dict[str, float]:
    """``apiserver_request_total`` summed by ``verb resource``."""
    with urllib.request.urlopen(f"{plane.server}/metrics", context=plane.ssl_context(), timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = REQUEST_LINE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group("labels")))
        key = f"{labels.get('verb', '?')} {labels.get('resource', '?')}"
        if labels.get("subresource"):
            key += f"/{labels['subresource']}"
        totals[key] = totals.get(key, 0.0) + float(match.group("value"))
    return totals


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    changed = {key: after[key] - before.get(key, 0.0) for key in after}
    return {key: value for key, value in sorted(changed.items()) if value}


def idle_rate(plane: ControlPlane, seconds: float) -> tuple[float, dict[str, float]]:
    before = apiserver_requests(plane)
    time.sleep(seconds)
    changes = delta(apiserver_requests(plane), before)
    return sum(changes.values()) * 60.0 / seconds, changes


def count_items(plane: ControlPlane, kind: str, namespace: str) -> int:
    result = plane.kubectl("get", kind, "-o", "name", namespace=namespace)
    return len([line for line in result.stdout.splitlines() if line.strip()])


def statuses_written(plane: ControlPlane, namespace: str) -> int:
    result = plane.kubectl("get", "sessionprocessors", "-o", "json", namespace=namespace)
    items = json.loads(result.stdout)["items"]
    return sum(1 for item in items if (item.get("status") or {}).get("observedGeneration"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sessionpipe-bench-") as scratch:
        plane = ControlPlane(Path(scratch) / "controlplane")
        plane.start()
        try:
            results = run(plane, Path(scratch), args.count, args.idle_seconds)
        finally:
            plane.stop()
    print(json.dumps(results, indent=2))
    print()
    print(f"CRs applied at once:                    {results['count']}")
    print(f"all CronJobs exist after:               {results['seconds_until_all_cronjobs']:.2f} s")
    print(f"all statuses written after:             {results['seconds_until_all_statuses']:.2f} s")
    print(f"operator peak RSS:                      {results['operator_peak_rss_mib']:.1f} MiB")
    print(f"idle API requests/min, with operator:   {results['idle_requests_per_minute_with_operator']:.1f}")
    print(f"idle API requests/min, without (peer):  {results['idle_requests_per_minute_without_operator']:.1f}")
    print(f"idle requests/min due to the operator:  {results['idle_requests_per_minute_operator_share']:.1f}")
    print(f"operator's own client requests, idle:   {results['operator_client_requests_while_idle']:.0f}")
    return 0


def run(plane: ControlPlane, scratch: Path, count: int, idle_seconds: float) -> dict[str, Any]:
    install_crd(plane)
    namespace = "bench"
    plane.kubectl("create", "namespace", namespace)
    prepare_namespace(plane, namespace)
    operator = OperatorProcess(plane, scratch / "operator")
    operator.start()
    try:
        items = [
            {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "metadata": {"name": f"proc-{number:03d}"},
                "spec": {
                    "processor": "usage",
                    "schedule": f"{number % 60} 3 * * *",
                    "sessions": {"claimName": "transcripts"},
                    # one database per CR: 200 writers of one database would be refused as duplicates
                    "database": {"claimName": "warehouse", "path": f"db-{number:03d}.duckdb"},
                },
            }
            for number in range(count)
        ]
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        started = time.monotonic()
        plane.kubectl("apply", "-f", "-", namespace=namespace, input=manifest)
        applied = time.monotonic() - started
        wait_for(lambda: count_items(plane, "cronjobs", namespace) >= count, 600, "all CronJobs", interval=0.5)
        all_cronjobs = time.monotonic() - started
        wait_for(lambda: statuses_written(plane, namespace) >= count, 600, "all statuses", interval=0.5)
        all_statuses = time.monotonic() - started

        # Let the garbage collector settle: it discovers the new CRD within ~30 s and then checks every
        # CronJob's owner once with a GET; that is not the operator's idle traffic.
        time.sleep(45)
        own_before = operator.metric_sum("sessionpipe_operator_api_requests_total")
        with_operator, with_detail = idle_rate(plane, idle_seconds)
        own_idle = operator.metric_sum("sessionpipe_operator_api_requests_total") - own_before
        peak_rss = operator.peak_rss_bytes()
    finally:
        operator.stop()
    time.sleep(5)
    without_operator, without_detail = idle_rate(plane, idle_seconds)
    return {
        "count": count,
        "seconds_kubectl_apply": round(applied, 2),
        "seconds_until_all_cronjobs": round(all_cronjobs, 2),
        "seconds_until_all_statuses": round(all_statuses, 2),
        "operator_peak_rss_mib": round(peak_rss / 2**20, 1),
        "idle_seconds": idle_seconds,
        "idle_requests_per_minute_with_operator": round(with_operator, 1),
        "idle_requests_per_minute_without_operator": round(without_operator, 1),
        "idle_requests_per_minute_operator_share": round(with_operator - without_operator, 1),
        "operator_client_requests_while_idle": own_idle,
        "idle_requests_with_operator_by_verb_resource": with_detail,
        "idle_requests_without_operator_by_verb_resource": without_detail,
    }


if __name__ == "__main__":
    raise SystemExit(main())
