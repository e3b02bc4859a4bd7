"""``/metrics``: the usage in the snapshot as Prometheus counters, summed over all time.

``sessionpipe_usage_tokens_total{user,model,type}`` and ``sessionpipe_usage_cost_usd_total{user,model}``
only grow as runs add calls, so ``increase(…[30d])`` is the use of those 30 days. The project is not
a label: every repository a user ever opened is a project, so it would multiply the series by
hundreds per user; the dashboard's pages and ``/api/usage?by=project`` answer per-project questions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: The ``type`` label of each token count, in the order the usage queries sum them.
TOKEN_TYPES = ("input", "output", "cache_creation", "cache_read")
#: (user, model, [input, output, cache creation, cache read], cost) rows.
UsageRows = Sequence[tuple[str, str, Sequence[int], float]]


class _UsageCollector(Collector):
    def __init__(self, rows: UsageRows, published: float) -> None:
        self.rows = rows
        self.published = published

    def collect(self) -> Iterator[Metric]:
        tokens = CounterMetricFamily(
            "sessionpipe_usage_tokens",
            "Tokens of the deduplicated calls in the snapshot, by user, model and type (input, output, "
            "cache_creation, cache_read), summed over all time",
            labels=["user", "model", "type"],
        )
        cost = CounterMetricFamily(
            "sessionpipe_usage_cost_usd",
            "Cost in US dollars of the deduplicated calls in the snapshot, by user and model, summed over all time",
            labels=["user", "model"],
        )
        for user, model, counts, dollars in self.rows:
            for kind, count in zip(TOKEN_TYPES, counts, strict=True):
                tokens.add_metric([user, model, kind], count)
            cost.add_metric([user, model], dollars)
        published = GaugeMetricFamily(
            "sessionpipe_snapshot_published_timestamp_seconds",
            "When the snapshot the dashboard serves was published (its file's modification time)",
        )
        published.add_metric([], self.published)
        yield tokens
        yield cost
        yield published


def exposition(rows: UsageRows, published: float) -> bytes:
    """The Prometheus text exposition of the usage ``rows`` and the snapshot's publication time."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_UsageCollector(rows, published))
    return generate_latest(registry)
