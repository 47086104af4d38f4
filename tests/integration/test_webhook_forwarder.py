"""The real `provision integrations webhook` process against a real local HTTP receiver.

The receiver is an aiohttp app on 127.0.0.1 in the test; events are real ones written by the
event store; the forwarder is the installed command in a subprocess, killed and restarted as
an operator's machine would do it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from core.keys import RedisKeys
from core.runtime.redis_conn import connect
from core.runtime.redis_launcher import find_redis_server, start_redis
from statemachine.events import Event, event_from_fields
from statemachine.integrations.webhook.deadletter import Burial, DeadLetters, Pending
from statemachine.integrations.webhook.forwarder import Forwarder as WebhookForwarder
from statemachine.integrations.webhook.options import ForwarderOptions
from statemachine.integrations.webhook.policy import Outcome, RetryPolicy
from statemachine.integrations.webhook.sender import WebhookSender
from statemachine.integrations.webhook.signature import verify_signature
from statemachine.store import EventStore
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
        status = {"ok": 200, "500": 500, "400": 400, "429": 429, "503-huge": 503}[action]
        self.requests.append(Request(key, raw, headers, signed_ok, status))
        if status == 429:
            return web.Response(status=429, headers={"Retry-After": "0"})
        if status == 503:  # a number of seconds past what a float holds
            return web.Response(status=503, headers={"Retry-After": "1" + "0" * 400})
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


# --- one bad answer or entry never stops the forwarder ------------------------------------


async def test_a_retry_after_too_long_for_a_float_is_a_bad_answer_not_a_crash(
    receiver, spawn, store, secret_file, redis_client, redis_keys
):
    # Before, float(int("1" + 400 zeros)) raised OverflowError, which stopped the process;
    # restarted (systemd), it met the same event and the same answer: a crash loop.
    receiver.answer = lambda n, _event: "503-huge" if n <= 2 else "ok"
    forwarder = spawn(
        "--url", receiver.url, "--secret-file", str(secret_file), "--from", "start", *FAST_RETRIES
    )
    [event] = await _one_event(store)
    await wait_until(
        lambda: receiver.delivered_keys() == {event.event_id} or forwarder.process.poll(),
        timeout_s=30,
        message="the event delivered after two unreadable Retry-After answers",
    )
    assert forwarder.process.poll() is None, forwarder.log_path.read_text()[-2000:]
    assert [r.status for r in receiver.requests] == [503, 503, 200]
    await wait_until(lambda: group_drained(redis_client, redis_keys.events), message="acked")


async def test_malformed_and_trimmed_entries_become_dead_letters_once_and_the_rest_goes_on(
    receiver, spawn, store, redis_client, redis_keys, environ
):
    events_key = redis_keys.events
    # A previous run of the same consumer read two events and died before sending them;
    # then `audit archive` trimmed them from the stream.
    await make_job(store, 1, "web", ["verify"])
    await redis_client.xgroup_create(events_key, GROUP, id="0")
    read = await redis_client.xreadgroup(GROUP, "forwarder", {events_key: ">"}, count=2)
    trimmed = [raw_id.decode() for raw_id, _fields in read[0][1]]
    await redis_client.xdel(events_key, *trimmed)
    bogus = (await redis_client.xadd(events_key, {"event_id": "01JBOGUS", "v": "9" * 400})).decode()
    good = await make_job(store, 2, "web", [])
    forwarder = spawn("--url", receiver.url, *FAST_RETRIES)

    dead_key = redis_keys.integration_dead(GROUP)
    await wait_until(lambda: _xlen_is(redis_client, dead_key, 3), message="3 dead letters")
    await wait_until(lambda: len(receiver.delivered()) == 1, message="the good event delivered")
    await wait_until(lambda: group_drained(redis_client, events_key), message="all acknowledged")
    assert json.loads(receiver.delivered()[0].body)["job_id"] == good
    letters = json.loads(run_cli(environ, "dead", "--json").stdout)["dead"]
    by_stream = {letter["stream_id"]: letter for letter in letters}
    assert sorted(by_stream) == sorted([*trimmed, bogus])
    for stream_id in trimmed:
        assert by_stream[stream_id]["error"].startswith("trimmed: ")
        assert by_stream[stream_id]["attempts"] == 0
    assert by_stream[bogus]["error"].startswith("malformed: ")
    assert by_stream[bogus]["event_id"] == "01JBOGUS"
    assert forwarder.process.poll() is None
    assert "webhook.undeliverable" in forwarder.log_path.read_text()

    # A redrive cannot bring trimmed events back: they are reported and dropped, not
    # queued to be buried again at every redrive. The malformed one keeps its reason.
    redriven = run_cli(environ, "redrive", "--all")
    assert redriven.returncode == 1
    assert redriven.stdout.startswith("1 dead letter(s) queued")
    for stream_id in trimmed:
        assert stream_id in redriven.stderr
    assert redriven.stderr.count("no longer in the event stream") == 2
    await wait_until(
        lambda: _xlen_is(redis_client, redis_keys.integration_redrive(GROUP), 0),
        message="the redrive stream drained",
    )
    [again] = json.loads(run_cli(environ, "dead", "--json").stdout)["dead"]
    assert (again["stream_id"], again["error"][:10]) == (bogus, "malformed:")
    assert len(receiver.requests) == 1


# --- the dead letters and the forwarder, in this process ----------------------------------


async def _one_entry(store: EventStore) -> tuple[str, Event]:
    """A job's only event, with its id in the stream."""
    await make_job(store, 1, "web", [])
    [(stream_id, fields)] = [entry async for entry in store.iter_stream_entries(store.keys.events)]
    return stream_id, event_from_fields(fields, stream_id=stream_id)


async def test_burying_an_entry_no_longer_pending_still_records_it_and_says_so(
    redis_client, redis_keys, store
):
    letters = DeadLetters(redis_client, redis_keys, GROUP)
    stream_id, event = await _one_entry(store)
    # The group was re-created after the event was read: it is pending for nobody.
    await redis_client.xgroup_create(redis_keys.events, GROUP, id="$", mkstream=True)
    item = Pending(redis_keys.events, stream_id, stream_id, event, redriven=False)
    first = await letters.bury(item, attempts=3, error="http 500", at_ms=1)
    assert first.dead_id and not first.was_pending
    assert [d.stream_id for d in await letters.entries()] == [stream_id]
    # A retry after a lost answer must not record it twice.
    again = await letters.bury(item, attempts=3, error="http 500", at_ms=1, even_if_settled=False)
    assert again == Burial(dead_id="", was_pending=False)
    assert len(await letters.entries()) == 1


async def test_a_redriven_event_trimmed_since_is_dropped_not_buried_again(
    redis_client, redis_keys, store
):
    letters = DeadLetters(redis_client, redis_keys, GROUP)
    stream_id, event = await _one_entry(store)
    await redis_client.xadd(
        letters.redrive_stream,
        {"stream_id": stream_id, "event_id": event.event_id, "job_id": event.job_id},
    )
    await redis_client.xdel(redis_keys.events, stream_id)  # `audit archive`
    await letters.ensure_redrive_group()
    yielded: list[Pending] = []

    async def read() -> None:
        async for item in letters.redriven("forwarder", block_ms=50, claim_idle_ms=60_000):
            yielded.append(item)

    reading = asyncio.create_task(read())
    try:
        await wait_until(
            lambda: _xlen_is(redis_client, letters.redrive_stream, 0), message="dropped"
        )
    finally:
        reading.cancel()
    assert yielded == []
    assert await redis_client.xlen(letters.dead) == 0
    assert (await redis_client.xpending(letters.redrive_stream, GROUP))["pending"] == 0


def _options(url: str, **changes: object) -> ForwarderOptions:
    base = ForwarderOptions(
        url=url,
        secret=SECRET.encode(),
        policy=RetryPolicy(max_attempts=3, base_s=0.02, max_s=0.2),
        block_ms=100,
        start_from_history=True,
    )
    return dataclasses.replace(base, **changes)


async def test_an_entry_read_again_after_its_copy_was_delivered_is_not_sent_twice(
    receiver, store, redis_client, redis_keys
):
    # A is pending for a dead consumer, B for this one (it died while sending B). Started
    # again with room for one event at a time, the forwarder takes back B and sends it
    # (slowly), then XAUTOCLAIM hands back [A, B]: A waits for room while B is delivered,
    # acknowledged and released. B must then be seen as settled, not queued and sent again.
    job_a = await make_job(store, 1, "web", [])
    job_b = await make_job(store, 2, "web", [])
    events_key = redis_keys.events
    await redis_client.xgroup_create(events_key, GROUP, id="0")
    await redis_client.xreadgroup(GROUP, "gone", {events_key: ">"}, count=1)
    await redis_client.xreadgroup(GROUP, "forwarder", {events_key: ">"}, count=1)
    slow_once = {job_b}

    def answer(_n: int, event: dict) -> str:
        if event["job_id"] in slow_once:
            slow_once.discard(event["job_id"])
            return "slow"
        return "ok"

    receiver.answer = answer
    async with aiohttp.ClientSession() as session:
        sender = WebhookSender(session, receiver.url, secret=SECRET.encode(), timeout_s=5)
        forwarder = WebhookForwarder(
            redis_client,
            redis_keys,
            _options(receiver.url, max_in_flight=1, claim_idle_ms=0),
            sender,
        )
        running = asyncio.create_task(forwarder.run())
        try:
            await wait_until(lambda: len(receiver.delivered()) >= 2, message="A and B sent")
            # A third event is read only after the claimed batch [A, B] was dealt with, and
            # with room for one event it is sent only after anything queued before it.
            job_c = await make_job(store, 3, "web", [])
            await wait_until(
                lambda: any(json.loads(r.body)["job_id"] == job_c for r in receiver.delivered()),
                message="C sent",
            )
        finally:
            forwarder.stop()
            await running
    sent = [json.loads(r.body)["job_id"] for r in receiver.requests]
    assert sorted(sent) == sorted([job_a, job_b, job_c]), sent
    assert await group_drained(redis_client, events_key)


class BuggySender:
    """Stands for a bug in the sending code: raises for one job, sends the others."""

    def __init__(self, real: WebhookSender, broken_job: str) -> None:
        self._real = real
        self._broken_job = broken_job

    async def send(self, event: Event) -> Outcome:
        if event.job_id == self._broken_job:
            raise RuntimeError("a bug")
        return await self._real.send(event)


async def test_a_bug_while_delivering_one_event_buries_it_and_the_forwarder_goes_on(
    receiver, store, redis_client, redis_keys
):
    broken = await make_job(store, 1, "web", [])
    fine = await make_job(store, 2, "web", ["verify"])
    async with aiohttp.ClientSession() as session:
        real = WebhookSender(session, receiver.url, secret=SECRET.encode(), timeout_s=5)
        forwarder = WebhookForwarder(
            redis_client, redis_keys, _options(receiver.url), BuggySender(real, broken)
        )
        running = asyncio.create_task(forwarder.run())
        try:
            await wait_until(lambda: len(receiver.delivered()) == 2, message="the others sent")
            await wait_until(
                lambda: group_drained(redis_client, redis_keys.events), message="all settled"
            )
        finally:
            forwarder.stop()
            await running  # raised the bug before
    assert {json.loads(r.body)["job_id"] for r in receiver.delivered()} == {fine}
    [letter] = await DeadLetters(redis_client, redis_keys, GROUP).entries()
    assert (letter.job_id, letter.error) == (broken, "forwarder error: RuntimeError")


@pytest.mark.parametrize(
    "url",
    ["redis://:s3cret-pw@127.0.0.1:1/0", "unix:///nonexistent/redis.sock?password=s3cret-pw"],
)
@pytest.mark.parametrize("command", [("dead",), ("redrive", "--all")])
def test_a_redis_password_never_shows_in_the_commands_errors(environ, url, command):
    result = run_cli({**environ, "PROV_REDIS_URL": url}, *command)
    assert result.returncode == 3, result.stderr
    assert "cannot reach Redis at " in result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
