"""The agent's metrics: which label values are allowed, and how outcomes are counted."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import AgentMetrics, reason_label
from core import __version__
from core.errors import SettingsError
from core.reasons import Reason
from core.retry import Fail, Retry, Succeed
from core.runtime.settings import AgentSettings
from statemachine.integrations.stream_metrics import GroupStats, StreamStats


def metrics_with(*apps: str) -> AgentMetrics:
    metrics = AgentMetrics(agent_id="agent-1", target="local")
    metrics.set_apps(apps)
    return metrics


def value(metrics: AgentMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def label_values(metrics: AgentMetrics, family: str, label: str) -> set[str]:
    text = metrics.render(None).decode()
    return {
        sample.labels[label]
        for parsed in text_string_to_metric_families(text)
        if parsed.name == family
        for sample in parsed.samples
        if label in sample.labels
    }


def test_an_app_outside_the_catalogue_is_counted_as_unknown():
    metrics = metrics_with("redis")
    metrics.decided("$(attacker-controlled)", Succeed())
    metrics.decided("redis", Succeed())
    assert label_values(metrics, "provision_agent_jobs", "app_id") == {"unknown", "redis"}
    total = "provision_agent_jobs_total"
    labels = {"outcome": "succeeded", "reason": ""}
    assert value(metrics, total, app_id="unknown", **labels) == 1
    assert value(metrics, total, app_id="redis", **labels) == 1


def test_before_the_catalogue_is_known_every_app_is_unknown():
    metrics = AgentMetrics(agent_id="agent-1", target="local")
    metrics.started("redis")
    metrics.ran("redis", 2.0)
    assert value(metrics, "provision_agent_attempts_total", app_id="unknown") == 1
    assert value(metrics, "provision_agent_job_duration_seconds_count", app_id="unknown") == 1
    assert value(metrics, "provision_agent_attempts_total", app_id="redis") is None


def test_a_refused_job_counts_as_a_rejection_of_app_unknown_even_for_a_catalogue_app():
    metrics = metrics_with("redis")
    metrics.decided("redis", Fail(Reason.FINGERPRINT_MISMATCH))
    rejections = "provision_agent_rejections_total"
    assert value(metrics, rejections, reason="fingerprint_mismatch") == 1
    jobs = "provision_agent_jobs_total"
    failed = {"outcome": "failed", "reason": "fingerprint_mismatch"}
    assert value(metrics, jobs, app_id="unknown", **failed) == 1
    assert value(metrics, jobs, app_id="redis", **failed) is None


def test_a_dead_letter_is_a_rejection_without_a_job():
    metrics = metrics_with("redis")
    metrics.rejected(Reason.REPLAYED, job_ended=False)
    assert value(metrics, "provision_agent_rejections_total", reason="replayed") == 1
    assert label_values(metrics, "provision_agent_jobs", "app_id") == set()


def test_failures_cancellations_and_retries_keep_their_app_and_reason():
    metrics = metrics_with("redis")
    metrics.decided("redis", Fail(Reason.INSTALL_ERROR))
    metrics.decided("redis", Fail(Reason.CANCELLED))
    metrics.decided("redis", Retry(delay_s=1.0, reason=Reason.CONFIG_ERROR))
    jobs = "provision_agent_jobs_total"
    assert value(metrics, jobs, app_id="redis", outcome="failed", reason="install_error") == 1
    assert value(metrics, jobs, app_id="redis", outcome="cancelled", reason="cancelled") == 1
    retries = "provision_agent_retries_total"
    assert value(metrics, retries, app_id="redis", reason="config_error") == 1


def test_a_reason_outside_the_reason_codes_becomes_other():
    assert reason_label("install_error") == "install_error"
    assert reason_label("x" * 500) == "other"
    metrics = metrics_with("redis")
    metrics.decided("redis", Retry(delay_s=1.0, reason="made-up"))
    assert value(metrics, "provision_agent_retries_total", app_id="redis", reason="other") == 1


def test_the_info_gauge_names_the_agent_and_the_running_gauge_reads_live():
    metrics = AgentMetrics(agent_id="agent-7", target="web1")
    running = [1, 2]
    metrics.count_running(lambda: len(running))
    info = {"agent_id": "agent-7", "target": "web1", "version": __version__}
    assert value(metrics, "provision_agent_info", **info) == 1
    assert value(metrics, "provision_agent_running_jobs") == 2
    running.append(3)
    assert value(metrics, "provision_agent_running_jobs") == 3


def test_stream_gauges_show_the_last_snapshot_only():
    metrics = metrics_with()
    first = StreamStats(
        queues={"local": GroupStats(lag=3, pending=1)},
        waiting_retry=2,
        integrations={"billing": GroupStats(lag=5, pending=0)},
    )
    metrics.render(first)
    assert value(metrics, "provision_queue_depth", target="local") == 3
    assert value(metrics, "provision_queue_pending", target="local") == 1
    assert value(metrics, "provision_jobs_waiting_retry") == 2
    assert value(metrics, "provision_integration_lag", group="billing") == 5
    metrics.render(StreamStats(queues={}, waiting_retry=0, integrations={}))
    assert value(metrics, "provision_integration_lag", group="billing") is None
    assert metrics.render(None).count(b"provision_queue_depth{") == 0


def _agent_settings(**extra: str) -> AgentSettings:
    return AgentSettings.from_env({"PROV_REDIS_URL": "redis://127.0.0.1:1/0", **extra})


def test_the_metrics_address_is_off_unless_set():
    assert _agent_settings().metrics_addr is None
    assert _agent_settings(PROV_AGENT_METRICS_ADDR="off").metrics_addr is None
    addr = _agent_settings(PROV_AGENT_METRICS_ADDR="127.0.0.1:9464").metrics_addr
    assert addr == ("127.0.0.1", 9464)
    assert _agent_settings(PROV_AGENT_METRICS_ADDR="[::1]:9464").metrics_addr == ("::1", 9464)


@pytest.mark.parametrize("raw", ["9464", ":9464", "127.0.0.1:", "127.0.0.1:0", "h:99999", "h:x"])
def test_a_bad_metrics_address_names_the_variable(raw):
    with pytest.raises(SettingsError, match="PROV_AGENT_METRICS_ADDR"):
        _agent_settings(PROV_AGENT_METRICS_ADDR=raw)
