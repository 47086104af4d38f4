"""The real `provision integrations webhook` process against a real local HTTP receiver.

The receiver is an aiohttp app on 127.0.0.1 in the test; events are real ones written by the
event store; the forwarder is the installed command in a subprocess, killed and restarted as
an operator's machine would do it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from core.keys import RedisKeys
from core.redis_conn import connect
from core.redis_launcher import find_redis_server, start_redis
from statemachine.events import Event, event_from_fields
from statemachine.store import EventStore
from statemachine.webhook.signature import verify_signature
from tests.agent_support import provision_argv, wait_until
from tests.keyring_fixtures import ring_of

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SECRET = "whsec-forwarder-test-2f7c1e9a"
GROUP = "webhook"
FAST_RETRIES = ("--backoff-base", "0.02", "--backoff-max", "0.2", "--timeout", "2")


@dataclass
class Request:
    """One request the receiver saw, and what it answered."""

    key: str
    body: bytes
    headers: dict[str, str]
    signed_ok: bool
    status: int | None  # None: the connection was dropped


@dataclass
class Receiver:
    """A webhook receiver whose answer to each request is chosen by `answer`."""

    answer: Callable[[int, dict], str] = lambda _n, _event: "ok"
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    in_handler: int = 0

    def delivered(self) -> list[Request]:
        """Requests answered 2xx, in arrival order."""
        return [r for r in self.requests if r.status is not None and 200 <= r.status <= 299]

    def delivered_keys(self) -> set[str]:
        return {r.key for r in self.delivered()}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.in_handler += 1
        raw = await request.read()
        headers = dict(request.headers)
        signed_ok = verify_signature(
            SECRET, headers.get("X-Provision-Signature"), raw, 300, time.time()
        )
        event = json.loads(raw)
        action = self.answer(len(self.requests) + 1, event)
        key = headers.get("Idempotency-Key", "")
        if action == "slow":
            await asyncio.sleep(1.5)
            action = "ok"
        if action == "drop":
            self.requests.append(Request(key, raw, headers, signed_ok, None))
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=200)  # never reaches the forwarder
        status = {"ok": 200, "500": 500, "400": 400, "429": 429}[action]
        self.requests.append(Request(key, raw, headers, signed_ok, status))
        if status == 429:
            return web.Response(status=429, headers={"Retry-After": "0"})
        # A long error page: the dead letter keeps only a bounded part of it.
        return web.Response(status=status, text="ok" if status == 200 else "no " * 400)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    hook.url = f"http://{host}:{port}/hook"
    try:
        yield hook
    finally:
        await runner.cleanup()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_text(f"  {SECRET}\n")  # surrounding whitespace is not part of the secret
    path.chmod(0o600)
    return path


@pytest.fixture
def store(redis_client, redis_keys) -> EventStore:
    return EventStore(redis_client, redis_keys, ring_of("k1"))


class Forwarder:
    """One `provision integrations webhook` process with its output in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    async def wait(self, timeout_s: float = 20) -> int:
        return await asyncio.to_thread(self.process.wait, timeout_s)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def environ(redis_url, namespace) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "PROV_REDIS_URL": redis_url,
        "PROV_NAMESPACE": namespace,
        "PROV_LOG_FORMAT": "json",
    }


@pytest.fixture
def spawn(tmp_path, environ) -> Iterator[Callable[..., Forwarder]]:
    started: list[Forwarder] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Forwarder:
        argv = provision_argv("integrations", "webhook", *args)
        forwarder = Forwarder(argv, env or environ, tmp_path / "forwarder.log")
        started.append(forwarder)
        return forwarder

    yield start
    for forwarder in started:
        forwarder.close()


def run_cli(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        provision_argv("integrations", *args),
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def make_job(store: EventStore, n: int, app: str, path: list[str]) -> str:
    job_id = f"01J{n:023d}"
    await store.create_job(job_id, actor="panel:a", detail={"app_id": app, "target": "local"})
    for trigger in path:
        await transition(store, job_id, trigger)
    return job_id


async def transition(store: EventStore, job_id: str, trigger: str) -> None:
    detail = {"reason": "cancelled"} if trigger in ("cancel", "fail") else {}
    await store.transition(job_id, trigger, actor="agent:a", attempt=1, detail=detail)


async def all_events(store: EventStore) -> list[Event]:
    return [
        event_from_fields(fields, stream_id=stream_id)
        async for stream_id, fields in store.iter_stream_entries(store.keys.events)
    ]


async def group_drained(client, stream: str, group: str = GROUP) -> bool:
    """Every entry of `stream` was read by the group, and none is left pending."""
    groups = await client.xinfo_groups(stream)
    mine = [g for g in groups if g["name"] in (group, group.encode())]
    if not mine:
        return False
    info = await client.xinfo_stream(stream)
    last = info["last-generated-id"]
    return mine[0]["pending"] == 0 and mine[0]["last-delivered-id"] == last


PATH = ["verify", "validate", "start", "succeed"]


@pytest.mark.timeout(150)
async def test_every_event_arrives_signed_in_order_per_job_across_failures_and_two_sigkills(
    receiver, spawn, store, secret_file, redis_client, redis_keys
):
    # Every 3rd request fails with 500, every 7th has its connection dropped, every 11th is
    # told to come back later (429): the forwarder must retry its way through all of it.
    def flaky(n: int, _event: dict) -> str:
        if n % 3 == 0:
            return "500"
        if n % 7 == 0:
            return "drop"
        if n % 11 == 0:
            return "429"
        return "ok"

    receiver.answer = flaky
    args = (
        "--url",
        receiver.url,
        "--secret-file",
        str(secret_file),
        "--filter",
        "app=web",
        "--from",
        "start",
        "--max-attempts",
        "100",
        "--log-level",
        "debug",
        *FAST_RETRIES,
    )
    forwarder = spawn(*args)

    async def produce() -> None:
        # 50 jobs of `web` (forwarded) and 10 of `db` (filtered out), 300 events, their
        # transitions interleaved so every job's events are spread along the stream.
        jobs = [(n, "web" if n % 6 else "db") for n in range(1, 61)]
        for n, app in jobs:
            await make_job(store, n, app, [])
        for trigger in PATH:
            for n, _app in jobs:
                await transition(store, f"01J{n:023d}", trigger)
            await asyncio.sleep(0.2)

    producing = asyncio.create_task(produce())
    kills = 0
    for threshold in (60, 150):
        await wait_until(
            lambda threshold=threshold: len(receiver.delivered()) >= threshold,
            timeout_s=60,
            message=f"{threshold} deliveries",
        )
        forwarder.process.send_signal(signal.SIGKILL)
        assert await forwarder.wait() == -signal.SIGKILL
        kills += 1
        forwarder = spawn(*args)
    await producing

    events = await all_events(store)
    assert len(events) == 300
    web_jobs = {e.job_id for e in events if e.trigger == "submit" and e.detail["app_id"] == "web"}
    wanted = [e for e in events if e.job_id in web_jobs]
    assert len(wanted) == 250
    await wait_until(
        lambda: receiver.delivered_keys() >= {e.event_id for e in wanted},
        timeout_s=90,
        message="every web event delivered",
    )
    await wait_until(
        lambda: group_drained(redis_client, redis_keys.events),
        timeout_s=30,
        message="the group read everything and has nothing pending",
    )

    # Exactly the filtered events, each as the API shows it, under its own key.
    by_id = {e.event_id: e for e in events}
    assert receiver.delivered_keys() == {e.event_id for e in wanted}
    for request in receiver.requests:
        event = by_id[request.key]
        assert json.loads(request.body) == event.as_dict()
        assert request.headers["X-Provision-Event"] == event.trigger
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["User-Agent"].startswith("provision-webhook/")
        assert request.signed_ok, request.headers.get("X-Provision-Signature")
    # Per job, first deliveries come in the order the events were written.
    first_seen: dict[str, list[str]] = {}
    for request in receiver.delivered():
        job = first_seen.setdefault(by_id[request.key].job_id, [])
        if request.key not in job:
            job.append(request.key)
    for job_id in web_jobs:
        assert first_seen[job_id] == [e.event_id for e in wanted if e.job_id == job_id]
    assert kills == 2
    assert any(r.status == 500 for r in receiver.requests)
    assert any(r.status is None for r in receiver.requests)

    # SIGTERM: a clean stop, and the secret was never written to the logs.
    forwarder.process.send_signal(signal.SIGTERM)
    assert await forwarder.wait() == 0
    output = forwarder.log_path.read_text()
    assert "webhook.delivered" in output  # the logs were there to look at
    assert SECRET not in output
    assert SECRET[:12] not in output


async def test_permanent_and_exhausted_failures_go_to_the_dead_letters_and_redrive_delivers_them(
    receiver, spawn, store, secret_file, redis_client, redis_keys, environ
):
    good = [await make_job(store, n, "web", ["verify"]) for n in (1, 2, 3)]
    refused = [await make_job(store, n, "web", ["verify"]) for n in (4, 5)]
    broken = [await make_job(store, n, "web", ["verify"]) for n in (6, 7)]

    def picky(_n: int, event: dict) -> str:
        if event["job_id"] in refused:
            return "400"
        return "500" if event["job_id"] in broken else "ok"

    receiver.answer = picky
    spawn(
        "--url",
        receiver.url,
        "--secret-file",
        str(secret_file),
        "--from",
        "start",
        "--max-attempts",
        "3",
        *FAST_RETRIES,
    )
    dead_key = redis_keys.integration_dead(GROUP)
    await wait_until(
        lambda: _xlen_is(redis_client, dead_key, 8), timeout_s=30, message="8 dead letters"
    )
    events = await all_events(store)
    await wait_until(
        lambda: receiver.delivered_keys() == {e.event_id for e in events if e.job_id in good},
        timeout_s=30,
        message="the good jobs' events delivered",
    )

    listed = run_cli(environ, "dead", "--json")
    assert listed.returncode == 0, listed.stderr
    letters = json.loads(listed.stdout)["dead"]
    by_event = {e.event_id: e for e in events}
    assert {letter["event_id"] for letter in letters} == {
        e.event_id for e in events if e.job_id not in good
    }
    for letter in letters:
        event = by_event[letter["event_id"]]
        assert letter["job_id"] == event.job_id
        assert letter["trigger"] == event.trigger
        assert letter["stream_id"]
        assert letter["at"] > 0
        assert len(letter["error"]) <= 260  # a bounded part of the error page
        if event.job_id in refused:  # permanent: not retried
            assert (letter["attempts"], letter["error"][:8]) == (1, "http 400")
        else:
            assert letter["attempts"] == 3
            assert letter["error"].startswith("http 500")
            assert letter["error"].endswith("(after 3 attempts)")
    table = run_cli(environ, "dead")
    assert table.returncode == 0 and letters[0]["event_id"] in table.stdout
    assert (await redis_client.xpending(redis_keys.events, GROUP))["pending"] == 0

    unknown = run_cli(environ, "redrive", "--id", "1-1")
    assert unknown.returncode == 1 and "no dead letter 1-1" in unknown.stderr

    receiver.answer = lambda _n, _event: "ok"
    moved = run_cli(environ, "redrive", "--all")
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.startswith("8 dead letter(s) queued")
    await wait_until(
        lambda: receiver.delivered_keys() == {e.event_id for e in events},
        timeout_s=30,
        message="the redriven events delivered",
    )
    redrive_key = redis_keys.integration_redrive(GROUP)
    await wait_until(
        lambda: _xlen_is(redis_client, redrive_key, 0), timeout_s=10, message="redrive drained"
    )
    assert await redis_client.xlen(dead_key) == 0
    assert (await redis_client.xpending(redrive_key, GROUP))["pending"] == 0
    again = [r for r in receiver.delivered() if r.key in {x["event_id"] for x in letters}]
    assert all(r.signed_ok for r in again)
    assert all(json.loads(r.body) == by_event[r.key].as_dict() for r in again)


async def _xlen_is(client, key: str, count: int) -> bool:
    return await client.xlen(key) == count


async def test_filters_forward_only_the_chosen_app_and_trigger(
    receiver, spawn, store, redis_client, redis_keys
):
    await make_job(store, 1, "web", PATH)
    await make_job(store, 2, "db", PATH)
    await make_job(store, 3, "web", ["verify", "cancel"])
    await make_job(store, 4, "web", PATH)
    spawn(
        "--url",
        receiver.url,
        "--from",
        "start",
        "--filter",
        "app=web",
        "--filter",
        "trigger=succeed",
        *FAST_RETRIES,
    )
    await wait_until(
        lambda: group_drained(redis_client, redis_keys.events),
        timeout_s=30,
        message="the group read everything",
    )
    events = await all_events(store)
    expected = {
        e.event_id
        for e in events
        if e.trigger == "succeed" and e.job_id in ("01J" + "0" * 22 + "1", "01J" + "0" * 22 + "4")
    }
    assert len(expected) == 2
    assert sorted(r.key for r in receiver.requests) == sorted(expected)
    # Without --secret-file nothing is signed.
    assert all("X-Provision-Signature" not in r.headers for r in receiver.requests)


async def test_a_new_group_starts_from_now_by_default_and_skips_the_history(
    receiver, spawn, store, redis_client, redis_keys
):
    await make_job(store, 1, "web", PATH)
    spawn("--url", receiver.url, *FAST_RETRIES)
    await wait_until(
        lambda: _has_group(redis_client, redis_keys.events), message="the group was created"
    )
    await make_job(store, 2, "web", [])
    events = await all_events(store)
    await wait_until(lambda: receiver.requests, message="a delivery")
    await wait_until(
        lambda: group_drained(redis_client, redis_keys.events), message="the group caught up"
    )
    assert [r.key for r in receiver.requests] == [events[-1].event_id]


async def _has_group(client, stream: str) -> bool:
    return bool(await client.exists(stream)) and bool(await client.xinfo_groups(stream))


async def test_sigterm_during_a_post_lets_it_finish_and_acknowledges_it_then_exits_0(
    receiver, spawn, store, secret_file, redis_client, redis_keys
):
    receiver.answer = lambda _n, _event: "slow"
    forwarder = spawn("--url", receiver.url, "--secret-file", str(secret_file), "--from", "start")
    [event] = await _one_event(store)
    await wait_until(lambda: receiver.in_handler >= 1, timeout_s=20, message="a POST under way")
    forwarder.process.send_signal(signal.SIGTERM)
    assert await forwarder.wait() == 0
    assert receiver.delivered_keys() == {event.event_id}
    assert (await redis_client.xpending(redis_keys.events, GROUP))["pending"] == 0


async def _one_event(store: EventStore) -> list[Event]:
    await make_job(store, 1, "web", [])
    return await all_events(store)


async def test_the_forwarder_waits_out_a_redis_restart_and_goes_on(
    receiver, spawn, secret_file, tmp_path_factory, environ
):
    # A Redis of its own (the session's is shared), on a short path so its socket stays put.
    data = tmp_path_factory.mktemp("wr")
    binary = find_redis_server()
    server = start_redis(data, binary=binary)
    env = {**environ, "PROV_REDIS_URL": server.url}
    try:
        forwarder = spawn(
            "--url", receiver.url, "--secret-file", str(secret_file), "--from", "start", env=env
        )
        await _write_jobs(server.url, env["PROV_NAMESPACE"], [1, 2])
        await wait_until(lambda: len(receiver.delivered_keys()) == 2, message="2 deliveries")
        server.stop()
        await wait_until(
            lambda: "webhook.redis_error" in forwarder.log_path.read_text(),
            timeout_s=20,
            message="the forwarder noticed Redis was gone",
        )
        assert forwarder.process.poll() is None
        server = start_redis(data, binary=binary)
        assert server.url == env["PROV_REDIS_URL"]
        await _write_jobs(server.url, env["PROV_NAMESPACE"], [3, 4])
        await wait_until(
            lambda: len(receiver.delivered_keys()) == 4,
            timeout_s=40,
            message="deliveries after the restart",
        )
        forwarder.process.send_signal(signal.SIGTERM)
        assert await forwarder.wait() == 0
    finally:
        server.stop()


async def _write_jobs(url: str, namespace: str, numbers: list[int]) -> None:
    client = await connect(url)
    try:
        store = EventStore(client, RedisKeys(namespace), ring_of("k1"))
        for n in numbers:
            await make_job(store, n, "web", [])
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("content", "mode", "problem"),
    [
        (f"{SECRET}\n", 0o644, "readable or writable by everyone"),
        ("  \n", 0o600, "is empty"),
    ],
)
def test_a_secret_file_others_can_read_or_an_empty_one_is_refused_at_start(
    tmp_path, environ, content, mode, problem
):
    path = tmp_path / "webhook.secret"
    path.write_text(content)
    path.chmod(mode)
    result = subprocess.run(
        provision_argv(
            "integrations", "webhook", "--url", "http://127.0.0.1:9/", "--secret-file", str(path)
        ),
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert problem in result.stderr
    assert SECRET not in result.stdout + result.stderr
