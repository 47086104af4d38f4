"""`provision up` as a user runs it: real Redis, panel and agent processes, driven over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.agent_support import wait_until, write_app
from tests.auth_support import bearer, fetch_login_form

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TERMINAL = {"succeeded", "failed"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Up:
    """One `provision up` process and what it was given."""

    def __init__(self, tmp_path: Path, installers: Path, port: int) -> None:
        self.data_dir = tmp_path / "data"
        self.log_path = tmp_path / "up.log"
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "PROV_DATA_DIR": str(self.data_dir),
            "PROV_PANEL_PORT": str(port),
            "PROV_INSTALLERS_DIR": str(installers),
            "PROV_LEASE_S": "3",
            "PROV_KILL_GRACE_S": "1",
            "PROV_SHUTDOWN_GRACE_S": "5",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "core", "up"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def headers(self) -> dict[str, str]:
        """The admin token `provision up` leaves for the client commands."""
        return bearer((self.data_dir / "admin.token").read_text().strip())


async def _ready(up: Up) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{up.url}/readyz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


@pytest.fixture
def installers(tmp_path: Path) -> Path:
    folder = tmp_path / "installers"
    write_app(
        folder,
        "hello",
        'echo "hello $NAME"; echo "to stderr" >&2',
        inputs=[{"name": "name", "type": "string", "default": "world"}],
    )
    write_app(folder, "broken-config", 'echo "config test failed" >&2; exit 3')
    marker = tmp_path / "flaky.marker"
    write_app(
        folder,
        "flaky",
        f"if [ ! -e {marker} ]; then touch {marker}; exit 2; fi\necho ok",
        retry={"max_retries": 2, "base_delay": 2, "factor": 1},
    )
    return folder


@pytest.fixture
async def up(tmp_path, installers):
    running = Up(tmp_path, installers, free_port())
    running.start()
    await wait_until(lambda: _ready(running), timeout_s=60, message="provision up is ready")
    yield running
    code = await asyncio.to_thread(running.stop)
    assert code == 0, running.output()
    await asyncio.to_thread(_assert_nothing_left, running.data_dir)


def _assert_nothing_left(data_dir: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        leftovers = _processes_mentioning(str(data_dir))
        if not leftovers:
            return
        time.sleep(0.2)
    raise AssertionError(f"left running after provision up stopped: {leftovers}")


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (text in cmdline or text.encode() in environ):
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


async def api(session: aiohttp.ClientSession, method: str, url: str, **kwargs) -> tuple[int, dict]:
    async with session.request(method, url, **kwargs) as response:
        return response.status, await response.json()


async def wait_job(session, up: Up, job_id: str, states: set[str], timeout_s: float = 60) -> dict:
    async def reached():
        _, job = await api(session, "GET", f"{up.url}/api/jobs/{job_id}")
        return job if job["state"] in states else None

    return await wait_until(reached, timeout_s=timeout_s, message=f"{job_id} in {states}")


async def test_a_job_submitted_through_the_api_runs_to_succeeded(up):
    async with aiohttp.ClientSession(headers=up.headers()) as session:
        status, body = await api(
            session,
            "POST",
            f"{up.url}/api/install",
            json={"app_id": "hello", "inputs": {"name": "e2e"}},
        )
        assert (status, body["state"]) == (201, "queued")
        job = await wait_job(session, up, body["job_id"], TERMINAL)
        assert (job["state"], job["exit_code"], job["attempt"]) == ("succeeded", 0, 1)
        _, events = await api(session, "GET", f"{up.url}/api/jobs/{body['job_id']}/events")
        assert [e["dst"] for e in events["events"]] == [
            "queued",
            "verified",
            "validated",
            "running",
            "succeeded",
        ]
        _, log = await api(session, "GET", f"{up.url}/api/jobs/{body['job_id']}/log")
        assert {(line["stream"], line["line"]) for line in log["lines"]} >= {
            ("stdout", "hello e2e"),
            ("stderr", "to stderr"),
        }


async def test_a_failing_app_ends_failed_with_its_reason(up):
    async with aiohttp.ClientSession(headers=up.headers()) as session:
        _, body = await api(
            session, "POST", f"{up.url}/api/install", json={"app_id": "broken-config"}
        )
        job = await wait_job(session, up, body["job_id"], TERMINAL)
        assert (job["state"], job["reason"], job["exit_code"]) == ("failed", "config_error", 3)


async def test_a_flaky_app_waits_to_retry_then_succeeds(up):
    async with aiohttp.ClientSession(headers=up.headers()) as session:
        _, body = await api(session, "POST", f"{up.url}/api/install", json={"app_id": "flaky"})
        waiting = await wait_job(session, up, body["job_id"], {"retry_wait"})
        assert waiting["next_retry_at"] > waiting["updated_at"]
        job = await wait_job(session, up, body["job_id"], TERMINAL)
        assert (job["state"], job["attempt"]) == ("succeeded", 2)


async def read_sse(response: aiohttp.ClientResponse, count: int) -> list[dict]:
    """Read `count` SSE messages (id, event, data) from an open response."""
    messages: list[dict] = []
    current: dict = {}
    while len(messages) < count:
        raw = await asyncio.wait_for(response.content.readline(), timeout=30)
        line = raw.decode().rstrip("\r\n")
        if not line:
            if "data" in current:
                messages.append(current)
            current = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")
    return messages


async def test_the_live_stream_resumes_from_last_event_id_with_nothing_lost_or_repeated(up):
    async with aiohttp.ClientSession(headers=up.headers()) as session:
        _, body = await api(
            session,
            "POST",
            f"{up.url}/api/install",
            json={"app_id": "hello", "inputs": {"name": "sse"}},
        )
        job_id = body["job_id"]
        await wait_job(session, up, job_id, TERMINAL)
        stream_url = f"{up.url}/api/jobs/{job_id}/stream"
        # 5 events and 2 log lines in all.
        async with session.get(stream_url) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            everything = await read_sse(response, 7)
        async with session.get(stream_url) as response:
            first = await read_sse(response, 3)
        async with session.get(stream_url, headers={"Last-Event-ID": first[-1]["id"]}) as response:
            rest = await read_sse(response, 4)
    assert [m["data"] for m in first + rest] == [m["data"] for m in everything]
    kinds = [m["event"] for m in everything]
    assert kinds.count("event") == 5 and kinds.count("log") == 2
    terminal = max(
        i for i, m in enumerate(everything) if json.loads(m["data"]).get("dst") in TERMINAL
    )
    assert terminal == len(everything) - 1  # every log line comes before the end


async def test_jobs_survive_a_restart_of_everything(up):
    async with aiohttp.ClientSession(headers=up.headers()) as session:
        _, body = await api(session, "POST", f"{up.url}/api/install", json={"app_id": "hello"})
        await wait_job(session, up, body["job_id"], TERMINAL)
    assert await asyncio.to_thread(up.stop) == 0
    up.start()
    await wait_until(lambda: _ready(up), timeout_s=60, message="provision up is back")
    async with aiohttp.ClientSession(headers=up.headers()) as session:
        status, job = await api(session, "GET", f"{up.url}/api/jobs/{body['job_id']}")
        assert (status, job["state"]) == (200, "succeeded")


async def test_up_creates_the_admin_once_and_shows_the_one_time_password_once(up):
    output = up.output()
    assert output.count("one-time password") == 1
    password = output.split("one-time password:", 1)[1].split()[0]
    token = (up.data_dir / "admin.token").read_text().strip()
    assert (up.data_dir / "admin.token").stat().st_mode & 0o777 == 0o600
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{up.url}/api/jobs") as anonymous:
            assert anonymous.status == 401
        form = await fetch_login_form(session, f"{up.url}/login")
        async with session.post(
            f"{up.url}/login",
            data=form.fields("admin", password, "/jobs"),
            headers=form.headers(),
            allow_redirects=False,
        ) as login:
            assert login.status == 303
            assert login.headers["Location"] == "/jobs"
    assert await asyncio.to_thread(up.stop) == 0
    up.start()
    await wait_until(lambda: _ready(up), timeout_s=60, message="provision up is back")
    assert up.output().count("one-time password") == 1  # not created (nor shown) again
    assert (up.data_dir / "admin.token").read_text().strip() == token  # still valid, kept


async def test_the_operator_commands_find_the_redis_up_started_from_the_data_folder_alone(up):
    """`provision audit`, `users` and `tokens` next to `provision up`, with no PROV_REDIS_URL."""
    async with aiohttp.ClientSession(headers=up.headers()) as session:
        _, body = await api(session, "POST", f"{up.url}/api/install", json={"app_id": "hello"})
        await wait_job(session, up, body["job_id"], TERMINAL)
    env = {key: value for key, value in up.env.items() if key != "PROV_REDIS_URL"}
    for argv, expected in (
        (["audit", "verify"], "every record holds"),
        (["audit", "replay"], body["job_id"]),
        (["users", "list"], "admin"),
    ):
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "core", *argv],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert expected in done.stdout + done.stderr
