"""Scenario 9: a Redis started without the append-only file.

docs/architecture.md §7: panel and agent warn loudly at start when the Redis they are given could
lose
acknowledged jobs. The server here is a plain `redis-server` started with `appendonly no`
(the launcher always turns the AOF on, so it cannot make one); the real `provision panel`
and `provision agent` processes must each log a `redis.durability_risk` warning naming
`appendonly` (JSON log lines, PROV_LOG_FORMAT=json), and still do their work: a job runs.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis

from core.runtime.redis_launcher import find_redis_server
from tests.agent_support import make_ring, wait_until, write_app
from tests.auth_support import bearer, make_token
from tests.chaos.redis_fault_support import (
    ProvisionProcess,
    agent_process,
    base_environ,
    free_port,
    panel_process,
    wait_for_panel,
)

pytestmark = [pytest.mark.redis, pytest.mark.chaos, pytest.mark.slow]

NAMESPACE = "noaof"


@pytest.fixture
def redis_without_aof(tmp_path) -> Iterator[str]:
    """A redis-server with no append-only file, on a Unix socket; its URL."""
    data = tmp_path / "redis"
    data.mkdir(mode=0o700)
    socket_path = data / "redis.sock"
    config = data / "redis.conf"
    config.write_text(
        f'dir "{data}"\n'
        "daemonize no\n"
        "port 0\n"
        f'unixsocket "{socket_path}"\n'
        "unixsocketperm 700\n"
        "appendonly no\n"
        "maxmemory-policy noeviction\n"
        f'logfile "{data / "redis.log"}"\n'
    )
    process = subprocess.Popen([str(find_redis_server()), str(config)], stdin=subprocess.DEVNULL)
    url = f"unix://{socket_path}"
    try:
        _wait_for_ping(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_for_ping(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while True:
        assert process.poll() is None, "redis-server exited at start"
        try:
            client = redis.Redis.from_url(url)
            try:
                if client.ping():
                    assert client.config_get("appendonly") == {"appendonly": "no"}
                    return
            finally:
                client.close()
        except redis.ConnectionError:
            pass
        assert time.monotonic() < deadline, "redis-server did not answer PING"
        time.sleep(0.05)


def _aof_warnings(process: ProvisionProcess) -> list[dict]:
    return [
        line
        for line in process.log_lines()
        if line.get("event") == "redis.durability_risk"
        and line.get("level") == "warning"
        and "appendonly" in str(line.get("problem", ""))
    ]


@pytest.mark.timeout(120)
async def test_panel_and_agent_warn_at_start_about_a_redis_without_aof_and_still_run_a_job(
    tmp_path: Path, redis_without_aof: str
):
    installers = tmp_path / "installers"
    write_app(installers, "hello", "echo hello")
    make_ring(tmp_path / "keys")
    token = await make_token(redis_without_aof, NAMESPACE)
    base = base_environ(
        redis_url=redis_without_aof,
        namespace=NAMESPACE,
        keys_file=tmp_path / "keys",
        installers=installers,
        home=tmp_path,
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    panel = panel_process(base, tmp_path / "panel.log", port)
    agent = agent_process(base, tmp_path / "agent.log", "agent-noaof")
    panel.start()
    agent.start()
    try:
        async with aiohttp.ClientSession(headers=bearer(token)) as session:
            await wait_for_panel(session, url, panel)
            await wait_until(
                lambda: _aof_warnings(agent), timeout_s=30, message="the agent's AOF warning"
            )
            assert _aof_warnings(panel), panel.output()

            body = {"app_id": "hello", "inputs": {}}
            async with session.post(f"{url}/api/install", json=body) as response:
                assert response.status == 201, await response.text()
                job_id = (await response.json())["job_id"]

            async def finished() -> dict | None:
                async with session.get(f"{url}/api/jobs/{job_id}") as response:
                    job = await response.json()
                return job if job["state"] in {"succeeded", "failed"} else None

            job = await wait_until(finished, timeout_s=60, message=f"job {job_id} to finish")
            assert job["state"] == "succeeded", (job, agent.output())
    finally:
        panel.stop()
        agent.stop()
    # Said once, at start: not on every request or every loop of the agent.
    assert len(_aof_warnings(panel)) == 1, panel.output()
    assert len(_aof_warnings(agent)) == 1, agent.output()
