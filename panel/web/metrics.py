"""Prometheus metrics of one panel process, in a registry of its own (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from statemachine.integrations.stream_metrics import StreamCollector, StreamStats


class PanelMetrics:
    """Requests, submissions, jobs by state, queue depths and integration lag."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "provision_http_requests",
            "HTTP requests answered, by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "provision_http_request_seconds",
            "Time to answer an HTTP request (streams excluded).",
            ["route"],
            registry=self.registry,
        )
        self.submissions = Counter(
            "provision_submissions",
            "Jobs submitted, by app and outcome (accepted, invalid, refused: over a limit).",
            ["app_id", "outcome"],
            registry=self.registry,
        )
        self.jobs = Gauge(
            "provision_jobs",
            "Jobs by state, among the most recent 10,000.",
            ["state"],
            registry=self.registry,
        )
        self.streams = StreamCollector()
        self.registry.register(self.streams)

    def render(self, states: dict[str, int], streams: StreamStats | None = None) -> bytes:
        """The text exposition, with the job gauge and the stream gauges refreshed."""
        for state, count in states.items():
            self.jobs.labels(state=state).set(count)
        self.streams.update(streams)
        return generate_latest(self.registry)
