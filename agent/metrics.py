"""Prometheus metrics of one agent process, in a registry of its own (tests build many agents).

Label values come from bounded sets only. An `app_id` label is an id of the agent's own
whitelisted catalogue (`set_apps`), never a value read from a stream entry or a snapshot as
such: anyone able to write to Redis could otherwise mint a new series per entry. A job refused
by a check layer is counted under `app_id="unknown"`, and every reason label is one of the
docs/architecture.md §5 reason codes (anything else becomes "other").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from core import __version__
from core.reasons import Reason
from core.retry import Fail, Retry, Succeed
from statemachine.integrations.stream_metrics import StreamCollector, StreamStats
from statemachine.machine import FAILED, SUCCEEDED

UNKNOWN_APP: Final = "unknown"
OTHER_REASON: Final = "other"

# Refusals by the check layers (signature, key, expiry, replay, parsing, whitelist, inputs,
# fingerprint, script path): the job never ran, and what it claimed to be is not trusted.
REJECTION_REASONS: Final = frozenset(
    {
        Reason.BAD_SIGNATURE,
        Reason.UNKNOWN_KEY,
        Reason.EXPIRED,
        Reason.REPLAYED,
        Reason.MALFORMED,
        Reason.UNKNOWN_JOB,
        Reason.NOT_WHITELISTED,
        Reason.FINGERPRINT_MISMATCH,
        Reason.INVALID_INPUTS,
        Reason.UNSAFE_PATH,
    }
)
_REASONS: Final = frozenset(str(reason) for reason in Reason)

# Installers take from a fraction of a second (already installed) to most of an hour.
DURATION_BUCKETS_S: Final = (
    0.1,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
)


def reason_label(reason: str) -> str:
    """`reason` when it is a docs/architecture.md §5 reason code, else "other"."""
    return str(reason) if str(reason) in _REASONS else OTHER_REASON


class AgentMetrics:
    """Jobs by outcome, rejections, attempts, retries, durations, running jobs, queue gauges."""

    def __init__(self, *, agent_id: str, target: str) -> None:
        self.registry = CollectorRegistry()
        self._apps: frozenset[str] = frozenset()
        self.jobs = Counter(
            "provision_agent_jobs",
            "Jobs this agent ended, by app, outcome (succeeded, failed, cancelled) and reason.",
            ["app_id", "outcome", "reason"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "provision_agent_rejections",
            "Entries and jobs refused by a check layer (signature, whitelist, ...), by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "provision_agent_attempts",
            "Installer runs started, by app.",
            ["app_id"],
            registry=self.registry,
        )
        self.retries = Counter(
            "provision_agent_retries",
            "Runs that ended in retry_wait, by app and reason.",
            ["app_id", "reason"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "provision_agent_job_duration_seconds",
            "Time one installer run took (verify probe included), by app.",
            ["app_id"],
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self.running = Gauge(
            "provision_agent_running_jobs",
            "Installers running now in this agent.",
            registry=self.registry,
        )
        info = Gauge(
            "provision_agent_info",
            "Always 1: who this agent is.",
            ["agent_id", "target", "version"],
            registry=self.registry,
        )
        info.labels(agent_id=agent_id, target=target, version=__version__).set(1)
        self.streams = StreamCollector()
        self.registry.register(self.streams)

    # --- label rules ------------------------------------------------------------------------

    def set_apps(self, app_ids: Iterable[str]) -> None:
        """The whitelisted catalogue's app ids: the only values an `app_id` label may take."""
        self._apps = frozenset(app_ids)

    def app_label(self, app_id: str) -> str:
        """`app_id` when the catalogue has it, else "unknown"."""
        return app_id if app_id in self._apps else UNKNOWN_APP

    def count_running(self, running: Callable[[], int]) -> None:
        """Read the running-jobs gauge from `running` at each scrape."""
        self.running.set_function(lambda: float(running()))

    # --- one call per outcome -----------------------------------------------------------------

    def decided(self, app_id: str, decision: Succeed | Retry | Fail) -> None:
        """Count a recorded decision about a job of `app_id` (read from its snapshot)."""
        if isinstance(decision, Succeed):
            self.jobs.labels(self.app_label(app_id), SUCCEEDED, "").inc()
        elif isinstance(decision, Retry):
            self.retries.labels(self.app_label(app_id), reason_label(decision.reason)).inc()
        elif decision.reason in REJECTION_REASONS:
            self.rejected(decision.reason, job_ended=True)
        elif decision.reason == Reason.CANCELLED:
            self.jobs.labels(self.app_label(app_id), "cancelled", Reason.CANCELLED).inc()
        else:
            self.jobs.labels(self.app_label(app_id), FAILED, reason_label(decision.reason)).inc()

    def rejected(self, reason: str, *, job_ended: bool) -> None:
        """Count a refusal; `job_ended` when it also failed a job (not just a dead letter)."""
        label = reason_label(reason)
        self.rejections.labels(label).inc()
        if job_ended:
            self.jobs.labels(UNKNOWN_APP, FAILED, label).inc()

    def started(self, app_id: str) -> None:
        """Count an installer run that starts now."""
        self.attempts.labels(self.app_label(app_id)).inc()

    def ran(self, app_id: str, duration_s: float) -> None:
        """Record how long one installer run took."""
        self.duration.labels(self.app_label(app_id)).observe(duration_s)

    # --- exposition -------------------------------------------------------------------------

    def render(self, streams: StreamStats | None) -> bytes:
        """The text exposition, with the stream gauges from `streams` (None: left out)."""
        self.streams.update(streams)
        return generate_latest(self.registry)
