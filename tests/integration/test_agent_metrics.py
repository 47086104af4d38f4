"""Prometheus metrics of a real `provision agent` process, and the queue gauges of the panel."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import AgentMetrics
from agent.metrics_server import start_metrics_server
from core.keys import AGENTS_GROUP
from core.reasons import Reason
from core.retry import Fail
from core.runtime.settings import PanelSettings
from panel.app import create_app
from statemachine.integrations.consumer import EventConsumer
from statemachine.integrations.stream_metrics import read_stream_stats
from tests.agent_support import (
    agent_environ,
    provision_argv,
    submit,
    wait_for_state,
    wait_until,
    write_app,
)
from tests.auth_support import bearer, make_token

pytestmark = [pytest.mark.redis]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def agent(tmp_path, redis_url, namespace, installers) -> Iterator:
    started: list[subprocess.Popen[bytes]] = []
    logs: list = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        env = agent_environ(
            redis_url=redis_url,
            namespace=namespace,
            keys_file=tmp_path / "hmac.keys",
            installers=installers,
            agent_id="agent-m",
        )
        log = (tmp_path / "agent.log").open("ab")
        logs.append(log)
        process = subprocess.Popen(
            provision_argv("agent", *args), env=env, stdout=log, stderr=subprocess.STDOUT
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    for log in logs:
        log.close()
    # Shown by pytest only when the test failed: what the agent said.
    if (agent_log := tmp_path / "agent.log").exists():
        print(agent_log.read_text(errors="replace")[-8000:])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(await response.text())


async def try_scrape(url: str) -> Samples | None:
    try:
        return await scrape(url)
    except aiohttp.ClientConnectionError:
        return None


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_real_agent_counts_outcomes_retries_rejections_and_durations(
    installers, ring, store, agent, tmp_path
):
    write_app(installers, "good", "exit 0")
    write_app(installers, "bad", "exit 1")
    flaky = '[ "${PROV_ATTEMPT}" -ge 2 ] || exit 2'
    write_app(installers, "flaky", flaky, retry={"max_retries": 2, "base_delay": 0.2})
    write_app(installers, "later", "exit 2", retry={"max_retries": 2, "base_delay": 600})
    write_app(installers, "vanish", "exit 0")
    # Queued while its app is still whitelisted, refused once the folder is gone.
    vanished = await submit(store, ring, installers, "vanish")
    shutil.rmtree(installers / "vanish")
    jobs = {
        name: await submit(store, ring, installers, name)
        for name in ("good", "bad", "flaky", "later")
    }
    port = free_port()
    agent("--metrics-addr", f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}/metrics"

    assert (await wait_for_state(store, vanished.job_id, "failed"))["reason"] == "not_whitelisted"
    assert (await wait_for_state(store, jobs["good"].job_id, "succeeded"))["attempt"] == "1"
    assert (await wait_for_state(store, jobs["bad"].job_id, "failed"))["reason"] == (
        "validation_error"
    )
    assert (await wait_for_state(store, jobs["flaky"].job_id, "succeeded"))["attempt"] == "2"
    await wait_for_state(store, jobs["later"].job_id, "retry_wait")

    samples = await wait_until(lambda: try_scrape(url), message="the agent's /metrics answers")
    jobs_total = "provision_agent_jobs_total"
    ok = {"outcome": "succeeded", "reason": ""}
    assert sample(samples, jobs_total, app_id="good", **ok) == 1
    assert sample(samples, jobs_total, app_id="flaky", **ok) == 1
    failed = {"outcome": "failed", "reason": "validation_error"}
    assert sample(samples, jobs_total, app_id="bad", **failed) == 1
    refused = {"outcome": "failed", "reason": "not_whitelisted"}
    assert sample(samples, jobs_total, app_id="unknown", **refused) == 1
    assert sample(samples, "provision_agent_rejections_total", reason="not_whitelisted") == 1
    # An app id that is not in the catalogue never becomes a label value.
    assert all(("app_id", "vanish") not in labels for _name, labels in samples)

    attempts = "provision_agent_attempts_total"
    assert sample(samples, attempts, app_id="good") == 1
    assert sample(samples, attempts, app_id="bad") == 1
    assert sample(samples, attempts, app_id="flaky") == 2
    assert sample(samples, attempts, app_id="later") == 1
    retries = "provision_agent_retries_total"
    assert sample(samples, retries, app_id="flaky", reason="install_error") == 1
    assert sample(samples, retries, app_id="later", reason="install_error") == 1

    count = "provision_agent_job_duration_seconds_count"
    assert sample(samples, count, app_id="flaky") == 2
    assert sample(samples, count, app_id="good") == 1
    buckets = {
        labels
        for name, labels in samples
        if name == "provision_agent_job_duration_seconds_bucket" and ("app_id", "good") in labels
    }
    assert ("le", "3600.0") in {item for labels in buckets for item in labels}

    assert sample(samples, "provision_agent_running_jobs") == 0
    info = [labels for name, labels in samples if name == "provision_agent_info"]
    assert len(info) == 1
    assert {("agent_id", "agent-m"), ("target", "local")} <= info[0]
    # Every entry was taken and acknowledged; one job waits for its retry.
    assert sample(samples, "provision_queue_depth", target="local") == 0
    assert sample(samples, "provision_queue_pending", target="local") == 0
    assert sample(samples, "provision_jobs_waiting_retry") == 1


def panel_settings(tmp_path: Path, installers: Path, redis_url: str, namespace: str):
    return PanelSettings.from_env(
        {
            "PROV_REDIS_URL": redis_url,
            "PROV_NAMESPACE": namespace,
            "PROV_INSTALLERS_DIR": str(installers),
            "PROV_HMAC_KEYS_FILE": str(tmp_path / "hmac.keys"),
        }
    )


async def test_the_panel_shows_queue_depth_pending_and_integration_lag_with_no_agent_running(
    installers, ring, store, redis_client, redis_keys, redis_url, namespace, tmp_path
):
    write_app(installers, "good", "exit 0")
    for _ in range(3):
        await submit(store, ring, installers, "good")
    for _ in range(2):
        await submit(store, ring, installers, "good", target="web1")
    # An agent of target web1 heartbeats, so the panel watches that queue too.
    beat = {"agent_id": "web1-agent", "target": "web1", "last_seen": 0}
    await redis_client.hset(redis_keys.agents, "web1-agent", json.dumps(beat))
    # An agent took one local entry and has not acknowledged it yet.
    local = redis_keys.jobs_stream("local")
    await redis_client.xgroup_create(local, AGENTS_GROUP, id="0")
    await redis_client.xreadgroup(AGENTS_GROUP, "gone", {local: ">"}, count=1)
    # An integration that has read two of the five submit events, acknowledged none yet.
    billing = EventConsumer(redis_client, redis_keys, group="billing", name="billing-1")
    await billing.ensure_group()
    await redis_client.xreadgroup("billing", "billing-1", {redis_keys.events: ">"}, count=2)

    app = create_app(panel_settings(tmp_path, installers, redis_url, namespace), ring=ring)
    token = await make_token(redis_url, namespace)
    async with TestClient(TestServer(app), headers=bearer(token)) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        samples = parse(await response.text())

    assert sample(samples, "provision_queue_depth", target="local") == 2
    assert sample(samples, "provision_queue_pending", target="local") == 1
    assert sample(samples, "provision_queue_depth", target="web1") == 2
    assert sample(samples, "provision_queue_pending", target="web1") == 0
    assert sample(samples, "provision_jobs_waiting_retry") == 0
    assert sample(samples, "provision_integration_lag", group="billing") == 3
    assert sample(samples, "provision_integration_pending", group="billing") == 2
    assert sample(samples, "provision_jobs", state="queued") == 5


async def test_a_group_whose_lag_redis_cannot_tell_is_counted_from_its_last_delivered_id(
    redis_client, redis_keys
):
    ids = [await redis_client.xadd(redis_keys.events, {"n": str(n)}) for n in range(5)]
    # A group started at an arbitrary id: Redis knows neither its entries read nor its lag.
    await redis_client.xgroup_create(redis_keys.events, "late", id=ids[1])
    groups = await redis_client.xinfo_groups(redis_keys.events)
    assert groups[0]["lag"] is None
    stats = await read_stream_stats(redis_client, redis_keys, ["local"])
    assert stats.integrations["late"].lag == 3
    assert stats.queues["local"].lag == 0


def test_an_agent_refuses_to_start_with_a_bad_metrics_address(
    tmp_path, redis_url, namespace, installers, ring
):
    env = agent_environ(
        redis_url=redis_url,
        namespace=namespace,
        keys_file=tmp_path / "hmac.keys",
        installers=installers,
        agent_id="agent-bad",
        PROV_AGENT_METRICS_ADDR="everywhere",
    )
    result = subprocess.run(
        provision_argv("agent"), env=env, capture_output=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert b"PROV_AGENT_METRICS_ADDR" in result.stderr


async def test_the_agent_endpoint_still_answers_with_its_counters_when_redis_is_down(
    redis_keys,
):
    metrics = AgentMetrics(agent_id="agent-x", target="local")
    metrics.set_apps(["good"])
    metrics.decided("good", Fail(Reason.INSTALL_ERROR))
    # A real client aimed at a port where no Redis listens.
    unreachable = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1.0
    )
    port = free_port()
    runner = await start_metrics_server(
        metrics, unreachable, redis_keys, "local", host="127.0.0.1", port=port
    )
    try:
        samples = await scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        await runner.cleanup()
        await unreachable.aclose()
    failed = {"app_id": "good", "outcome": "failed", "reason": "install_error"}
    assert sample(samples, "provision_agent_jobs_total", **failed) == 1
    assert not [name for name, _labels in samples if name.startswith("provision_queue_")]
