"""The client commands (`provision submit|jobs|logs|cancel`) against a real panel and agent.

The panel runs in-process on a free TCP port; the CLI runs as a real subprocess (its own event
loop), exactly as a user types it; an in-process agent runs the jobs with real installers.
The first tests check the pure pieces (the SSE parser, the token lookup) without a server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from agent.worker import Agent
from core.keyring import KeyRing
from core.runtime.settings import AgentSettings, ClientSettings, PanelSettings
from panel.app import create_app
from panel.client.panel_client import PanelError, SSEParser, token_of
from tests.agent_support import agent_environ, make_ring, wait_until, write_app
from tests.auth_support import bearer, make_token

# panel URL -> an admin token for it (the panel fixture makes one per test).
TOKENS: dict[str, str] = {}

pytestmark = pytest.mark.redis

SECRET = "s3cr3t-Zebra-42"
JOB_ID_LENGTH = 26


# -- pure pieces -------------------------------------------------------------------------


def test_the_sse_parser_reassembles_messages_split_anywhere_and_skips_comments():
    wire = (
        ": ping\r\n\r\n"
        'id: 1-0/0-0\r\nevent: event\r\ndata: {"dst": "queued"}\r\n\r\n'
        'event: log\nid: 1-0/2-0\ndata: {"line":\ndata: "héllo"}\n\n'
    )
    for size in (1, 2, 3, 7, len(wire)):
        parser = SSEParser()
        messages = []
        for start in range(0, len(wire), size):
            messages.extend(parser.feed(wire[start : start + size]))
        assert [(m.kind, m.data, m.id) for m in messages] == [
            ("event", '{"dst": "queued"}', "1-0/0-0"),
            ("log", '{"line":\n"héllo"}', "1-0/2-0"),
        ], size


def test_the_sse_parser_waits_for_the_blank_line_before_dispatching():
    parser = SSEParser()
    assert parser.feed("event: event\ndata: {}\n") == []
    assert [m.data for m in parser.feed("\n")] == ["{}"]


def test_prov_token_wins_over_the_token_file(tmp_path):
    (tmp_path / "admin.token").write_text("from-file\n")
    settings = ClientSettings.from_env({"PROV_DATA_DIR": str(tmp_path), "PROV_TOKEN": "env"})
    assert token_of(settings) == "env"


def test_the_token_file_in_the_data_folder_is_used_when_prov_token_is_unset(tmp_path):
    (tmp_path / "admin.token").write_text("from-file\n")
    assert token_of(ClientSettings.from_env({"PROV_DATA_DIR": str(tmp_path)})) == "from-file"
    assert token_of(ClientSettings.from_env({"PROV_DATA_DIR": str(tmp_path / "none")})) is None


def test_an_unreadable_token_file_is_an_error_rather_than_silently_no_token(tmp_path):
    (tmp_path / "admin.token").mkdir()  # reading a folder fails like a file we may not read
    with pytest.raises(PanelError, match="token file"):
        token_of(ClientSettings.from_env({"PROV_DATA_DIR": str(tmp_path)}))


# -- a real panel, a real agent, the CLI as a subprocess -----------------------------------


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def installers(tmp_path: Path) -> Path:
    path = tmp_path / "installers"
    path.mkdir()
    write_app(
        path,
        "hello",
        'echo "hello $NAME"; echo "careful" >&2',
        inputs=[{"name": "name", "type": "string", "default": "world"}],
    )
    write_app(path, "broken", 'echo "about to fail"; exit 1')
    write_app(path, "slow", 'echo "started"; sleep 30', timeout=120)
    write_app(path, "steps", 'echo "one"; sleep 1; echo "two" >&2; sleep 1; echo "three"')
    write_app(
        path,
        "secretive",
        # Proves the secret arrived intact without ever printing it.
        f'[ "$PASSWORD" = "{SECRET}" ] && echo "password ok" || {{ echo "wrong"; exit 1; }}',
        inputs=[{"name": "password", "type": "password", "required": True}],
    )
    write_app(
        path,
        "server",
        "exit 0",
        inputs=[
            {"name": "port", "type": "port", "required": True},
            {"name": "admin_email", "type": "email", "required": True},
            {
                "name": "features",
                "type": "multiselect",
                "validation": {"allowed_values": ["mail", "dns", "web"]},
            },
        ],
    )
    return path


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "hmac.keys"


@pytest.fixture
def ring(keys_file: Path) -> KeyRing:
    return make_ring(keys_file)


@pytest.fixture
async def panel_url(redis_url, namespace, installers, keys_file, ring) -> AsyncIterator[str]:
    """A real panel on a free port of 127.0.0.1, served in this test's event loop."""
    settings = PanelSettings.from_env(
        {
            "PROV_REDIS_URL": redis_url,
            "PROV_NAMESPACE": namespace,
            "PROV_INSTALLERS_DIR": str(installers),
            "PROV_HMAC_KEYS_FILE": str(keys_file),
        }
    )
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    TOKENS[url] = await make_token(redis_url, namespace)
    try:
        yield url
    finally:
        await runner.cleanup()


@pytest.fixture
async def start_agent(
    tmp_path, redis_url, namespace, installers, keys_file, ring
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Start an in-process agent on demand (some tests need jobs to wait in the queue first)."""
    running: list[tuple[Agent, asyncio.Task[None], aioredis.Redis]] = []

    async def start() -> None:
        settings = AgentSettings.from_env(
            agent_environ(
                redis_url=redis_url,
                namespace=namespace,
                keys_file=keys_file,
                installers=installers,
                agent_id="host-1",
            )
        )
        client = aioredis.from_url(redis_url, socket_timeout=10)
        agent = Agent(settings, client, lambda: ring)
        running.append((agent, asyncio.create_task(agent.run()), client))

    yield start
    for agent, task, client in running:
        agent.stop(immediate=True)
        await asyncio.wait_for(task, timeout=30)
        await client.aclose()


@pytest.fixture
def cli_env(tmp_path: Path, panel_url: str) -> dict[str, str]:
    """The CLI's environment: this panel, an admin token, no PROV_* from outside."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROV_")}
    env.update(
        {
            "PROV_PANEL_URL": panel_url,
            "PROV_DATA_DIR": str(tmp_path / "data"),
            "PROV_TOKEN": TOKENS[panel_url],
        }
    )
    return env


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", "from core.cli.root import main; main()", *args]


@pytest.fixture
def provision(cli_env, tmp_path) -> Callable[..., Awaitable[Result]]:
    async def run(*args: str, stdin: str | None = None, timeout_s: float = 60) -> Result:
        process = await asyncio.create_subprocess_exec(
            *cli_argv(*args),
            env=cli_env,
            cwd=tmp_path,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdin_bytes = stdin.encode() if stdin is not None else None
        out, err = await asyncio.wait_for(process.communicate(stdin_bytes), timeout_s)
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())

    return run


async def api_get(panel_url: str, path: str) -> dict:
    # The test's own reads go over HTTP too, as another user of the API would.
    import aiohttp

    headers = bearer(TOKENS[panel_url])
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.get(panel_url + path) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def job_state(panel_url: str, job_id: str) -> str:
    return (await api_get(panel_url, f"/api/jobs/{job_id}"))["state"]


async def submitted_job(provision, *args: str) -> str:
    result = await provision("submit", *args)
    assert result.code == 0, result
    return result.stdout.strip()


# -- submit --------------------------------------------------------------------------------


@pytest.mark.redis
async def test_submit_prints_only_the_job_id_and_the_job_exists_queued(provision, panel_url):
    result = await provision("submit", "hello", "--set", "name=tester")
    assert result.code == 0, result
    job_id = result.stdout.strip()
    assert result.stdout == job_id + "\n"
    assert len(job_id) == JOB_ID_LENGTH
    job = await api_get(panel_url, f"/api/jobs/{job_id}")
    assert job["app_id"] == "hello"
    assert job["state"] == "queued"


@pytest.mark.redis
async def test_submit_json_prints_the_api_answer(provision, panel_url):
    result = await provision("submit", "hello", "--json")
    assert result.code == 0, result
    answer = json.loads(result.stdout)
    assert answer["state"] == "queued"
    assert await job_state(panel_url, answer["job_id"]) == "queued"


@pytest.mark.redis
async def test_submit_follow_exits_0_and_shows_timeline_and_log_of_a_succeeding_job(
    provision, start_agent
):
    await start_agent()
    result = await provision("submit", "hello", "--set", "name=tester", "--follow")
    assert result.code == 0, result
    lines = result.stdout.splitlines()
    assert len(lines[0]) == JOB_ID_LENGTH
    states = [line.split()[1] for line in lines[1:] if not line.startswith("  ")]
    assert states == ["queued", "verified", "validated", "running", "succeeded"]
    assert any("agent:host-1" in line and "verified" in line for line in lines)
    assert "  out | hello tester" in lines
    assert "  err | careful" in lines
    # The log lines come between the start and the end of the run.
    assert lines.index("  out | hello tester") < next(
        i for i, line in enumerate(lines) if "succeeded" in line
    )


@pytest.mark.redis
async def test_submit_follow_exits_1_with_the_reason_when_the_job_fails(provision, start_agent):
    await start_agent()
    result = await provision("submit", "broken", "--follow")
    assert result.code == 1, result
    assert "  out | about to fail" in result.stdout
    assert "failed" in result.stdout
    assert "failed: validation_error (exit code 1)" in result.stderr


@pytest.mark.redis
async def test_submit_follow_json_prints_one_json_message_per_line_ending_with_the_job(
    provision, start_agent
):
    await start_agent()
    result = await provision("submit", "hello", "--follow", "--json")
    assert result.code == 0, result
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["state"] == "queued"
    kinds = {line["kind"] for line in lines[1:]}
    assert kinds == {"event", "log", "job"}
    assert lines[-1]["data"]["state"] == "succeeded"


@pytest.mark.redis
async def test_submit_with_invalid_inputs_prints_every_field_error_and_exits_2(
    provision, panel_url
):
    result = await provision(
        "submit", "server", "--set", "port=99999", "--set", "nosuch=1", "--set", "admin_email=x"
    )
    assert result.code == 2, result
    assert result.stdout == ""
    for field in ("port:", "admin_email:", "nosuch:"):
        assert field in result.stderr, result.stderr
    listing = await api_get(panel_url, "/api/jobs")
    assert listing["jobs"] == []


@pytest.mark.redis
async def test_submit_of_an_unknown_app_exits_2_with_the_message(provision):
    result = await provision("submit", "no-such-app")
    assert result.code == 2, result
    assert "no such app: no-such-app" in result.stderr
    assert result.stdout == ""


@pytest.mark.redis
async def test_a_malformed_set_is_a_usage_error(provision):
    result = await provision("submit", "hello", "--set", "novalue")
    assert result.code == 2, result
    assert "NAME=VALUE" in result.stderr


@pytest.mark.redis
async def test_repeating_set_for_a_multiselect_submits_a_list(provision, panel_url):
    job_id = await submitted_job(
        provision,
        "server",
        "--set",
        "port=8443",
        "--set",
        "admin_email=ops@example.org",
        "--set",
        "features=web",
        "--set",
        "features=mail",
    )
    events = (await api_get(panel_url, f"/api/jobs/{job_id}/events"))["events"]
    # The server normalises a multiselect to the manifest's order.
    assert events[0]["detail"]["inputs"]["features"] == ["mail", "web"]


@pytest.mark.redis
async def test_repeating_set_for_a_single_value_field_is_a_usage_error(provision):
    result = await provision("submit", "hello", "--set", "name=a", "--set", "name=b")
    assert result.code == 2, result
    assert "name was given 2 times" in result.stderr


@pytest.mark.redis
async def test_a_password_read_from_stdin_reaches_the_job_but_never_the_output(
    provision, start_agent, panel_url
):
    await start_agent()
    result = await provision(
        "submit", "secretive", "--set", "password=-", "--follow", stdin=SECRET + "\n"
    )
    assert result.code == 0, result
    assert "  out | password ok" in result.stdout
    assert SECRET not in result.output
    job_id = result.stdout.splitlines()[0]
    events = await api_get(panel_url, f"/api/jobs/{job_id}/events")
    assert SECRET not in json.dumps(events)


@pytest.mark.redis
async def test_a_password_from_an_empty_stdin_is_refused_before_submitting(provision, panel_url):
    result = await provision("submit", "secretive", "--set", "password=-", stdin="")
    assert result.code == 2, result
    assert "standard input is empty" in result.stderr
    assert (await api_get(panel_url, "/api/jobs"))["jobs"] == []


@pytest.mark.redis
async def test_ctrl_c_while_following_exits_130_and_leaves_the_job_running(
    cli_env, tmp_path, start_agent, panel_url
):
    await start_agent()
    process = await asyncio.create_subprocess_exec(
        *cli_argv("submit", "slow", "--follow"),
        env=cli_env,
        cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    seen: list[str] = []

    async def started() -> bool:
        seen.append((await process.stdout.readline()).decode())
        return "out | started" in seen[-1]

    await wait_until(started, timeout_s=30, message="the slow job's first line")
    process.send_signal(signal.SIGINT)
    _out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 130, err
    job_id = seen[0].strip()
    assert f"provision logs -f {job_id}" in err.decode()
    assert await job_state(panel_url, job_id) == "running"


# -- jobs ----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_jobs_prints_a_table_newest_first(provision):
    first = await submitted_job(provision, "hello")
    second = await submitted_job(provision, "broken")
    result = await provision("jobs")
    assert result.code == 0, result
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "JOB",
        "APP",
        "STATE",
        "ATTEMPT",
        "REASON",
        "WHO",
        "CREATED",
        "UPDATED",
    ]
    assert [row.split()[:4] for row in rows] == [
        [second, "broken", "queued", "0"],
        [first, "hello", "queued", "0"],
    ]


@pytest.mark.redis
async def test_jobs_json_gives_the_filtered_listing(provision):
    await submitted_job(provision, "hello")
    broken = await submitted_job(provision, "broken")
    result = await provision("jobs", "--app", "broken", "--json")
    assert result.code == 0, result
    listing = json.loads(result.stdout)
    assert [job["job_id"] for job in listing["jobs"]] == [broken]
    assert listing["jobs"][0]["state"] == "queued"


@pytest.mark.redis
async def test_jobs_limit_stops_at_a_page_and_says_how_to_continue(provision):
    for _ in range(3):
        await submitted_job(provision, "hello")
    result = await provision("jobs", "--limit", "2")
    assert len(result.stdout.splitlines()) == 3  # header and two jobs
    assert "--cursor" in result.stderr


@pytest.mark.redis
async def test_jobs_filter_by_state_shows_only_that_state(provision, start_agent, panel_url):
    queued = await submitted_job(provision, "hello")
    result = await provision("cancel", queued)
    assert result.code == 0, result
    await submitted_job(provision, "hello")
    failed = await provision("jobs", "--state", "failed", "--json")
    assert [job["job_id"] for job in json.loads(failed.stdout)["jobs"]] == [queued]
    assert json.loads(failed.stdout)["jobs"][0]["reason"] == "cancelled"


# -- logs ----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_logs_prints_stdout_lines_to_stdout_and_stderr_lines_to_stderr(
    provision, start_agent, panel_url
):
    await start_agent()
    job_id = await submitted_job(provision, "hello", "--set", "name=tester")
    await wait_until(lambda: _is(panel_url, job_id, "succeeded"), message="the job to succeed")
    result = await provision("logs", job_id)
    assert result.code == 0, result
    assert result.stdout == "hello tester\n"
    assert result.stderr == "careful\n"


@pytest.mark.redis
async def test_logs_follow_prints_lines_as_they_come_until_the_job_ends(
    cli_env, tmp_path, provision, start_agent
):
    job_id = await submitted_job(provision, "steps")
    following = asyncio.create_task(provision("logs", "-f", job_id))
    # The agent starts only now, so the lines are written while `logs -f` is watching.
    await start_agent()
    result = await asyncio.wait_for(following, 60)
    assert result.code == 0, result
    assert result.stdout == "one\nthree\n"
    assert result.stderr.startswith("two\n")
    assert f"job {job_id} succeeded" in result.stderr


@pytest.mark.redis
async def test_logs_of_an_unknown_job_exits_1(provision):
    result = await provision("logs", "01J0000000000000000000000Z")
    assert result.code == 1, result
    assert "no such job" in result.stderr


# -- cancel --------------------------------------------------------------------------------


@pytest.mark.redis
async def test_cancel_of_a_queued_job_prints_its_state_and_ends_it_cancelled(provision, panel_url):
    job_id = await submitted_job(provision, "hello")
    result = await provision("cancel", job_id)
    assert result.code == 0, result
    assert result.stdout == "failed\n"
    job = await api_get(panel_url, f"/api/jobs/{job_id}")
    assert (job["state"], job["reason"]) == ("failed", "cancelled")


@pytest.mark.redis
async def test_cancel_of_a_running_job_prints_running_and_the_agent_kills_it(
    provision, start_agent, panel_url
):
    await start_agent()
    job_id = await submitted_job(provision, "slow")
    await wait_until(lambda: _is(panel_url, job_id, "running"), message="the job to run")
    result = await provision("cancel", job_id)
    assert result.code == 0, result
    assert result.stdout == "running\n"
    await wait_until(lambda: _is(panel_url, job_id, "failed"), message="the job to be killed")


@pytest.mark.redis
async def test_cancel_of_a_finished_job_exits_1_with_the_message(provision):
    job_id = await submitted_job(provision, "hello")
    assert (await provision("cancel", job_id)).code == 0
    result = await provision("cancel", job_id)
    assert result.code == 1, result
    assert "the job already failed" in result.stderr
    assert result.stdout == ""


@pytest.mark.redis
async def test_cancel_of_an_unknown_job_exits_1(provision):
    result = await provision("cancel", "01J0000000000000000000000Z")
    assert result.code == 1, result
    assert "no such job" in result.stderr


# -- an unreachable panel ------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize(
    "args", [("submit", "hello"), ("jobs",), ("logs", "-f", "x"), ("cancel", "x")]
)
async def test_an_unreachable_panel_gives_a_clear_error_and_exit_3(
    args, cli_env, provision, unused_port
):
    cli_env["PROV_PANEL_URL"] = f"http://127.0.0.1:{unused_port}"
    result = await provision(*args)
    assert result.code == 3, result
    assert f"cannot reach the panel at http://127.0.0.1:{unused_port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.redis
async def test_a_bad_panel_url_is_a_usage_error(cli_env, provision):
    cli_env["PROV_PANEL_URL"] = "ftp://example.org"
    result = await provision("jobs")
    assert result.code == 2, result
    assert "PROV_PANEL_URL" in result.stderr


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _is(panel_url: str, job_id: str, state: str) -> bool:
    return await job_state(panel_url, job_id) == state
