"""A job's output never drives the operator's terminal: `provision logs` and `submit --follow`
escape control characters on a terminal, and hand a pipe the bytes as they are.

The escaping is checked as a pure function first; then the CLI runs as a real subprocess
against a real panel and agent, once with its standard output on a pseudo-terminal (a real
`isatty()`, no seam) and once on a pipe.
"""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from agent.worker import Agent
from core.keyring import KeyRing
from core.runtime.settings import AgentSettings, PanelSettings
from panel.app import create_app
from panel.client.commands import escape_controls, log_line, terminal_text
from tests.agent_support import agent_environ, make_ring, wait_until, write_app
from tests.auth_support import bearer, make_token

NASTY = "\033]0;PWNED\007\033[2J"
ESCAPED = "\\x1b]0;PWNED\\x07\\x1b[2J"


# -- the escaping --------------------------------------------------------------------------


def test_control_characters_are_escaped_but_tab_and_text_are_kept():
    assert escape_controls(NASTY + "after\tthe tab") == ESCAPED + "after\tthe tab"
    assert escape_controls("\r\x00\x7f\x9b héllo ✓") == "\\x0d\\x00\\x7f\\x9b héllo ✓"


def test_only_a_terminal_gets_the_escaped_form():
    assert terminal_text(NASTY, is_terminal=True) == ESCAPED
    assert terminal_text(NASTY, is_terminal=False) == NASTY


def test_the_timeline_line_is_escaped_on_a_terminal_and_plain_elsewhere():
    line = {"stream": "stderr", "line": NASTY + "x"}
    assert ESCAPED + "x" in log_line(line, is_terminal=True)
    assert "\033]" not in log_line(line, is_terminal=True)
    assert log_line(line, is_terminal=False) == "  err | " + NASTY + "x"


# -- the real CLI ----------------------------------------------------------------------------


@pytest.fixture
def installers(tmp_path: Path) -> Path:
    path = tmp_path / "installers"
    path.mkdir()
    write_app(path, "noisy", r"printf '\033]0;PWNED\007\033[2Jafter\tend\n'; echo plain")
    return path


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return make_ring(tmp_path / "hmac.keys")


@pytest.fixture
async def panel(redis_url, namespace, installers, tmp_path, ring) -> AsyncIterator[str]:
    settings = PanelSettings.from_env(
        {
            "PROV_REDIS_URL": redis_url,
            "PROV_NAMESPACE": namespace,
            "PROV_INSTALLERS_DIR": str(installers),
            "PROV_HMAC_KEYS_FILE": str(tmp_path / "hmac.keys"),
        }
    )
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def agent(tmp_path, redis_url, namespace, installers, ring) -> AsyncIterator[None]:
    settings = AgentSettings.from_env(
        agent_environ(
            redis_url=redis_url,
            namespace=namespace,
            keys_file=tmp_path / "hmac.keys",
            installers=installers,
            agent_id="host-1",
        )
    )
    client = aioredis.from_url(redis_url, socket_timeout=10)
    running = Agent(settings, client, lambda: ring)
    task = asyncio.create_task(running.run())
    yield
    running.stop(immediate=True)
    await asyncio.wait_for(task, timeout=30)
    await client.aclose()


@pytest.fixture
async def cli_env(tmp_path, panel, redis_url, namespace) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROV_")}
    env.update(
        {
            "PROV_PANEL_URL": panel,
            "PROV_DATA_DIR": str(tmp_path / "data"),
            "PROV_TOKEN": await make_token(redis_url, namespace),
            "TERM": "dumb",
        }
    )
    return env


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-c", "from core.cli.root import main; main()", *args]


def _run_on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """The CLI with its standard output on a pseudo-terminal; (code, terminal text, stderr)."""
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(
            _argv(*args),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=subprocess.PIPE,
        )
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        _, err = process.communicate(timeout=60)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    # The terminal turns "\n" into "\r\n".
    return process.returncode, b"".join(chunks).decode().replace("\r\n", "\n"), err.decode()


async def _finished_job(env: dict[str, str], panel: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run, _argv("submit", "noisy"), env=env, capture_output=True, check=False
    )
    assert done.returncode == 0, done
    job_id = done.stdout.decode().strip()

    async def succeeded() -> bool:
        import aiohttp

        async with (
            aiohttp.ClientSession(headers=bearer(env["PROV_TOKEN"])) as session,
            session.get(f"{panel}/api/jobs/{job_id}") as response,
        ):
            return (await response.json())["state"] == "succeeded"

    await wait_until(succeeded, message="the noisy job to succeed")
    return job_id


@pytest.mark.redis
async def test_logs_on_a_terminal_shows_escapes_and_a_pipe_gets_the_bytes(cli_env, panel, agent):
    job_id = await _finished_job(cli_env, panel)
    code, shown, _ = await asyncio.to_thread(_run_on_a_terminal, cli_env, "logs", job_id)
    assert code == 0
    assert "\033" not in shown and "\007" not in shown
    assert shown == f"{ESCAPED}after\tend\nplain\n"
    piped = await asyncio.to_thread(
        subprocess.run, _argv("logs", job_id), env=cli_env, capture_output=True, check=False
    )
    assert piped.returncode == 0
    assert piped.stdout == f"{NASTY}after\tend\nplain\n".encode()


@pytest.mark.redis
async def test_submit_follow_on_a_terminal_shows_the_log_line_escaped(cli_env, panel, agent):
    code, shown, err = await asyncio.to_thread(
        _run_on_a_terminal, cli_env, "submit", "noisy", "--follow"
    )
    assert code == 0, err
    assert "\033]" not in shown and "\007" not in shown and "\033[2J" not in shown
    assert f"{ESCAPED}after\tend" in shown
    assert "succeeded" in shown
