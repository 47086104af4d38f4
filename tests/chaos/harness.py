"""The chaos harness: a real Redis, the real panel and agents, a submitter and a supervisor.

Everything runs as it would in production: `redis-server` from the same launcher `provision
up` uses (append-only on, its own data folder, so a scenario may stop, kill or pause it and
start it again on the same socket), `provision panel` answering HTTP with a bearer token, and
`provision agent` processes. The harness records what a Jepsen-style checker needs: the
submit log (what the panel answered), the agents' deaths, and the installers' effect log,
where each run of a test app appends `job_id attempt pid` with O_APPEND (`>>`, one short line
per write, so concurrent runs never tear each other's lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import redis.asyncio as aioredis

from core.keyring import KeyRing
from core.keys import AGENTS_GROUP, RedisKeys
from core.runtime.redis_conn import connect
from core.runtime.redis_launcher import RedisServer, find_redis_server, start_redis
from core.runtime.settings import FsyncPolicy
from statemachine.events import event_from_fields
from statemachine.machine import TERMINAL_STATES
from statemachine.store import EventStore
from tests.agent_support import agent_environ, make_ring, provision_argv, wait_until, write_app
from tests.auth_support import bearer, make_token
from tests.chaos.checker import (
    AgentDeath,
    Report,
    Submission,
    check_history,
    parse_effect_log,
)

NAMESPACE: Final = "chaos"
SUBMIT_TIMEOUT_S: Final = 10.0
SUPERVISE_S: Final = 0.2
UNAVAILABLE_PAUSE_S: Final = 0.2
ARTIFACTS: Final = Path(__file__).resolve().parents[2] / "test-artifacts" / "chaos"


def full_size() -> bool:
    """`PROV_CHAOS_SCALE=full` runs the issue's sizes; anything else the CI sizes."""
    return os.environ.get("PROV_CHAOS_SCALE", "") == "full"


def sized(ci: int, full: int) -> int:
    """The CI or the full size of a scenario."""
    return full if full_size() else ci


def now_ms() -> int:
    """Wall-clock epoch milliseconds, the clock the events' `at` uses."""
    return time.time_ns() // 1_000_000


def free_port() -> int:
    """A free TCP port on the loopback address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Process:
    """A child process with its output in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    @property
    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        """Send `signum` unless the process already ended."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signum)

    async def wait(self, timeout_s: float) -> int:
        """Wait for the exit code (TimeoutExpired past the deadline)."""
        return await asyncio.to_thread(self.popen.wait, timeout_s)

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def output(self) -> str:
        """Everything the process printed."""
        return self.log_path.read_text(errors="replace")


@dataclass(slots=True)
class AgentSlot:
    """One agent identity: its current process, and whether the supervisor restarts it."""

    agent_id: str
    env: dict[str, str]
    process: Process | None = None
    supervised: bool = True
    starts: int = 0
    death_recorded: bool = False


@dataclass(slots=True)
class Summary:
    """A scenario's one-line result, also written as JSON under test-artifacts/chaos/."""

    scenario: str
    size: str
    acknowledged: int
    submissions: int
    faults: dict[str, int]
    lost: int
    duplicated: int
    extra_runs: int
    reruns_after_agent_death: int
    duration_s: float
    report: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The one-line summary."""
        faults = ", ".join(f"{k}={v}" for k, v in self.faults.items()) or "none"
        return (
            f"chaos {self.scenario} [{self.size}]: jobs={self.acknowledged} "
            f"(of {self.submissions} submissions) faults: {faults}; "
            f"lost={self.lost} duplicated={self.duplicated} extra_runs={self.extra_runs} "
            f"reruns_after_agent_death={self.reruns_after_agent_death} "
            f"in {self.duration_s:.1f}s"
        )


class Chaos:
    """One world: Redis, a panel, agents and test apps, torn down by `close()`."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        lease_s: float = 3.0,
        fsync: FsyncPolicy = "everysec",
        renew_leases: bool = True,
        **agent_env: str,
    ) -> None:
        self.tmp = tmp_path
        # A short data folder keeps the Unix socket inside it, so a restarted Redis listens
        # on the very same path and every client finds it again.
        self.redis_dir = Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))
        self.installers = tmp_path / "installers"
        self.installers.mkdir()
        self.keys_file = tmp_path / "hmac.keys"
        self.effects = tmp_path / "effects.log"
        self.effects.touch()
        self.submit_log = tmp_path / "submits.jsonl"
        self.keys = RedisKeys(NAMESPACE)
        self.ring: KeyRing = make_ring(self.keys_file)
        self.lease_s = lease_s
        self.fsync: FsyncPolicy = fsync
        self.agent_env = agent_env
        # False runs agents with lease renewal switched off (scenario 5: the checker must fail).
        self.agent_argv = (
            provision_argv("agent")
            if renew_leases
            else [
                sys.executable,
                str(Path(__file__).with_name("agent_without_renewal.py")),
                "agent",
            ]
        )
        self.binary = find_redis_server()
        self.redis: RedisServer | None = None
        self.panel: Process | None = None
        self.panel_url = ""
        self.token = ""
        self.slots: dict[str, AgentSlot] = {}
        self.deaths: list[AgentDeath] = []
        self.submissions: list[Submission] = []
        self.faults: dict[str, int] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._app_prefix = f"c{os.getpid() % 10000}{int(time.time()) % 100000}"

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start Redis and the panel, and make the API token."""
        self.start_redis()
        self.token = await make_token(self.redis_url, NAMESPACE, name="chaos")
        port = free_port()
        self.panel_url = f"http://127.0.0.1:{port}"
        env = self._common_env()
        # One user submits a whole scenario's jobs in a burst: more than a fair share, on purpose.
        env.update(
            {
                "PROV_PANEL_PORT": str(port),
                "PROV_SUBMISSIONS_PER_MINUTE": "100000",
                "PROV_MAX_UNFINISHED_PER_USER": "100000",
            }
        )
        self.panel = Process(provision_argv("panel"), env, self.tmp / "panel.log")
        await wait_until(self._panel_ready, timeout_s=30, message="the panel answers /readyz")

    async def close(self) -> None:
        """Stop everything this world started, and kill what its installers left behind."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for slot in self.slots.values():
            if slot.process is not None:
                slot.process.kill()
        if self.panel is not None:
            self.panel.kill()
        if self.redis is not None:
            self.redis.stop()
        kill_job_processes(self.job_ids_in_effects())
        shutil.rmtree(self.redis_dir, ignore_errors=True)

    def _common_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.tmp),
            "PROV_REDIS_URL": self.redis_url,
            "PROV_NAMESPACE": NAMESPACE,
            "PROV_HMAC_KEYS_FILE": str(self.keys_file),
            "PROV_INSTALLERS_DIR": str(self.installers),
            "PROV_LOG_FORMAT": "json",
        }

    async def _panel_ready(self) -> bool:
        assert self.panel is not None
        assert self.panel.alive, self.panel.output()
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{self.panel_url}/readyz") as response,
            ):
                return response.status == 200
        except aiohttp.ClientError:
            return False

    # --- Redis ------------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        """The URL of the (current or next) Redis: the socket path never changes."""
        return "unix://" + str(self.redis_dir / "redis.sock")

    def start_redis(self) -> None:
        """Start (or restart) Redis on the same data folder and socket."""
        self.redis = start_redis(self.redis_dir, binary=self.binary, fsync=self.fsync)
        assert self.redis.url == self.redis_url, self.redis.url

    def stop_redis(self) -> None:
        """A clean shutdown (the AOF is flushed)."""
        assert self.redis is not None
        self.redis.stop()
        self.fault("redis_clean_stop")

    def kill_redis(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.redis is not None
        self.redis.kill()
        self.fault("redis_sigkill")

    async def client(self) -> aioredis.Redis:
        """A fresh client of the current Redis (close it after use)."""
        return await connect(self.redis_url)

    # --- apps -------------------------------------------------------------------------------

    def app(
        self,
        name: str,
        *,
        fail_first: int = 0,
        sleep_s: float = 0,
        retry: dict[str, float] | None = None,
        **manifest: Any,
    ) -> str:
        """A test app whose every run appends `job_id attempt pid` to the effect log.

        `fail_first` runs exit 2 (decided from PROV_ATTEMPT, since the sandbox hands the
        script nothing else), and each run sleeps `sleep_s` first.
        """
        app_id = f"{self._app_prefix}-{name}"
        lines = [f'echo "$PROV_JOB_ID $PROV_ATTEMPT $$" >> {self.effects}']
        if sleep_s:
            lines.append(f"sleep {sleep_s}")
        if fail_first:
            lines.append(f'if [ "$PROV_ATTEMPT" -le {fail_first} ]; then exit 2; fi')
        if retry is not None:
            manifest["retry"] = retry
        write_app(self.installers, app_id, "\n".join(lines), **manifest)
        return app_id

    # --- agents -----------------------------------------------------------------------------

    def start_agent(self, agent_id: str, *, supervised: bool = True, **extra: str) -> AgentSlot:
        """Start `provision agent` as `agent_id` (the supervisor restarts it if it dies)."""
        env = agent_environ(
            redis_url=self.redis_url,
            namespace=NAMESPACE,
            keys_file=self.keys_file,
            installers=self.installers,
            agent_id=agent_id,
            PROV_LEASE_S=str(self.lease_s),
            PROV_LOG_FORMAT="json",
            HOME=str(self.tmp),
            **{**self.agent_env, **extra},
        )
        slot = AgentSlot(agent_id, env, supervised=supervised)
        self.slots[agent_id] = slot
        self._spawn(slot)
        return slot

    def _spawn(self, slot: AgentSlot) -> None:
        slot.starts += 1
        slot.death_recorded = False
        log_path = self.tmp / f"agent-{slot.agent_id}.log"
        slot.process = Process(self.agent_argv, slot.env, log_path)

    def kill_agent(self, agent_id: str) -> None:
        """SIGKILL the agent (the supervisor, if on, starts it again)."""
        slot = self.slots[agent_id]
        assert slot.process is not None
        if not slot.process.alive:
            return
        slot.process.kill()
        self.deaths.append(AgentDeath(agent_id, now_ms()))
        slot.death_recorded = True
        self.fault("agent_sigkill")

    async def terminate_agent(self, agent_id: str, timeout_s: float) -> int:
        """SIGTERM the agent, unsupervised, and wait for its exit code."""
        slot = self.slots[agent_id]
        slot.supervised = False
        assert slot.process is not None
        slot.process.signal(signal.SIGTERM)
        self.fault("agent_sigterm")
        code = await slot.process.wait(timeout_s)
        self.deaths.append(AgentDeath(agent_id, now_ms()))
        return code

    def supervise(self) -> None:
        """Start the loop that restarts any supervised agent that died."""
        self._supervisor = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        while True:
            for slot in self.slots.values():
                if slot.supervised and slot.process is not None and not slot.process.alive:
                    if not slot.death_recorded:  # it died of something we did not do
                        self.deaths.append(AgentDeath(slot.agent_id, now_ms()))
                        self.fault("agent_died_unasked")
                    self._spawn(slot)
            await asyncio.sleep(SUPERVISE_S)

    def fault(self, kind: str) -> None:
        """Count one injected fault."""
        self.faults[kind] = self.faults.get(kind, 0) + 1

    # --- submitting -------------------------------------------------------------------------

    async def submit_many(
        self, app_ids: list[str], count: int, *, parallel: int = 4, until_answered: bool = False
    ) -> None:
        """POST `count` installs round-robin over `app_ids`, `parallel` at a time.

        With `until_answered`, a submission whose answer is unknown (503, no answer) is sent
        again after a pause, as a client would, until the panel acknowledges or refuses it;
        every try is in the submit log.
        """
        queue: asyncio.Queue[str] = asyncio.Queue()
        for n in range(count):
            queue.put_nowait(app_ids[n % len(app_ids)])
        timeout = aiohttp.ClientTimeout(total=SUBMIT_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await self.wait_for_apps(session, app_ids)

            async def worker() -> None:
                while not queue.empty():
                    app_id = queue.get_nowait()
                    while (await self.submit(session, app_id)).outcome == "unknown":
                        if not until_answered:
                            break
                        await asyncio.sleep(UNAVAILABLE_PAUSE_S)

            await asyncio.gather(*(worker() for _ in range(parallel)))

    async def wait_for_apps(self, session: aiohttp.ClientSession, app_ids: list[str]) -> None:
        """Wait until the panel's catalogue (refreshed in the background) lists the apps."""

        async def listed() -> bool:
            for app_id in app_ids:
                async with session.get(
                    f"{self.panel_url}/api/apps/{app_id}", headers=bearer(self.token)
                ) as response:
                    if response.status != 200:
                        return False
            return True

        await wait_until(listed, timeout_s=60, interval_s=0.2, message=f"apps {app_ids}")

    async def submit(self, session: aiohttp.ClientSession, app_id: str) -> Submission:
        """One POST /api/install, recorded in the submit log whatever happens."""
        at = now_ms()
        try:
            async with session.post(
                f"{self.panel_url}/api/install",
                json={"app_id": app_id, "inputs": {}},
                headers=bearer(self.token),
            ) as response:
                status = response.status
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            record = Submission(app_id, "unknown", None, at_ms=at, error=repr(error)[:200])
        else:
            if 200 <= status < 300:
                job_id = json.loads(body)["job_id"]
                record = Submission(app_id, "acknowledged", status, job_id, at_ms=at)
            elif 400 <= status < 500:
                record = Submission(app_id, "refused", status, at_ms=at, error=body.decode()[:200])
            else:
                record = Submission(app_id, "unknown", status, at_ms=at, error=body.decode()[:200])
        self.submissions.append(record)
        with self.submit_log.open("a") as log:
            log.write(json.dumps(asdict(record)) + "\n")
        return record

    # --- draining and judging ---------------------------------------------------------------

    async def drain(self, timeout_s: float) -> None:
        """Wait until every job ended, nothing is pending and no retry is scheduled."""
        client = await self.client()
        try:

            async def settled() -> bool:
                ids = await client.zrange(self.keys.jobs_index, 0, -1)
                async with client.pipeline(transaction=False) as pipe:
                    for raw in ids:
                        pipe.hget(self.keys.job(raw.decode()), "state")
                    states = await pipe.execute()
                if any(s is None or s.decode() not in TERMINAL_STATES for s in states):
                    return False
                if await client.zcard(self.keys.retry):
                    return False
                return await self._pending(client) == 0

            await wait_until(settled, timeout_s=timeout_s, interval_s=0.5, message="the drain")
        finally:
            await client.aclose()

    async def _pending(self, client: aioredis.Redis) -> int:
        try:
            info = await client.xpending(self.keys.jobs_stream("local"), AGENTS_GROUP)
        except aioredis.ResponseError:
            return 0  # no group yet: nothing was ever delivered
        return int(info["pending"])

    async def check(self) -> Report:
        """Run the checker over everything this world recorded."""
        client = await self.client()
        try:
            store = EventStore(client, self.keys, self.ring)
            events = [
                event_from_fields(fields, stream_id=stream_id)
                async for stream_id, fields in store.iter_stream_entries(self.keys.events)
            ]
            pending = await self._pending(client)
        finally:
            await client.aclose()
        return check_history(
            self.submissions,
            events,
            parse_effect_log(self.effects.read_text()),
            self.ring,
            deaths=self.deaths,
            pending=pending,
        )

    def job_ids_in_effects(self) -> set[str]:
        """Every job id an installer run wrote down."""
        return {line.split()[0] for line in self.effects.read_text().splitlines() if line}

    def summarise(self, scenario: str, report: Report) -> Summary:
        """Print the one-line summary and write it as JSON under test-artifacts/chaos/."""
        summary = Summary(
            scenario=scenario,
            size="full" if full_size() else "ci",
            acknowledged=report.acknowledged,
            submissions=len(self.submissions),
            faults=dict(self.faults),
            lost=len(report.lost),
            duplicated=len(report.multiple_terminal),
            extra_runs=len(report.extra_runs) + len(report.unexplained_reruns),
            reruns_after_agent_death=report.reruns_after_agent_death,
            duration_s=round(time.monotonic() - self._started, 1),
            report=report.as_dict(),
        )
        print(summary.line())
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{scenario}-{summary.size}.json"
        path.write_text(json.dumps(asdict(summary), indent=2, sort_keys=True) + "\n")
        return summary

    def logs(self) -> str:
        """The tail of every process's output, for a failing assertion's message."""
        parts = []
        for slot in self.slots.values():
            if slot.process is not None:
                parts.append(f"--- agent {slot.agent_id}\n{slot.process.output()[-3000:]}")
        if self.panel is not None:
            parts.append(f"--- panel\n{self.panel.output()[-3000:]}")
        return "\n".join(parts)


def job_processes(job_ids: set[str]) -> list[int]:
    """Pids of live processes whose environment carries one of these PROV_JOB_IDs."""
    markers = {f"PROV_JOB_ID={job_id}".encode() for job_id in job_ids}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = set((proc / "environ").read_bytes().split(b"\0"))
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and environ & markers:
            found.append(int(proc.name))
    return found


def kill_job_processes(job_ids: set[str]) -> None:
    """SIGKILL what installers of these jobs left running (a killed agent's orphans)."""
    for pid in job_processes(job_ids):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
