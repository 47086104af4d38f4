"""A stateful property test: submit, agent kills, Redis restarts and time passing, at random.

The real parts run in one process and one event loop, so each step is quick and nothing else
moves between steps: a real Redis from the launcher (append-only on; "restart" stops it,
cleanly or with SIGKILL, and starts it again on the same data folder), the real EventStore
and the real Agent, with tiny leases and retry delays, running real installers from
`write_app`. An "agent kill" cancels the agent and its running jobs at once, with no graceful
stop (their process groups die, their entries wait for reclaim), and a new Agent object takes
over with a new consumer name. "Time passing" lets the loop run for a moment.

After every step: each job's replay from its own event stream is intact (chain, macs, only
legal transitions) and equals its stored snapshot, its events appear in the same order in the
global stream, and it has at most one terminal event. At the end, with a live agent: every job
reaches a terminal state, no job ran more often than its `start` events say, nothing went to
the dead-letter stream, and every succeeded job's last attempt really ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
import redis.asyncio as aioredis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from agent.worker import Agent
from core.keyring import KeyRing
from core.keys import RedisKeys
from core.runtime.redis_conn import connect, connect_sync
from core.runtime.redis_launcher import RedisServer, find_redis_server, start_redis
from core.runtime.settings import AgentSettings
from statemachine.events import event_from_fields
from statemachine.machine import TERMINAL_STATES
from statemachine.replay import replay_events, snapshot_drift
from statemachine.store import EventStore
from tests.agent_support import agent_environ, make_ring, submit, write_app

pytestmark = [pytest.mark.redis, pytest.mark.slow]

FULL = os.environ.get("HYPOTHESIS_PROFILE", "ci") == "full"
EXAMPLES = 40 if FULL else 12
STEPS = 25 if FULL else 10
DRAIN_TIMEOUT_S = 60.0
# Retries quick enough to happen within a test: waits of 0.2 s, twice.
RETRY = {"max_retries": 2, "base_delay": 0.2, "factor": 1}
T = TypeVar("T")


def _recording(effects: Path, then: str) -> str:
    """A script that appends `job attempt pid` to the effect log (O_APPEND), then `then`."""
    return f'echo "$PROV_JOB_ID $PROV_ATTEMPT $$" >> {effects}\n{then}'


def _write_apps(installers: Path, effects: Path) -> None:
    write_app(installers, "quick", _recording(effects, "exit 0"), retry=RETRY)
    write_app(installers, "slow", _recording(effects, "sleep 1.5"), retry=RETRY)
    write_app(installers, "broken", _recording(effects, "exit 1"), retry=RETRY)
    write_app(
        installers,
        "flaky",
        _recording(effects, '[ "$PROV_ATTEMPT" -ge 2 ] || exit 2'),
        retry=RETRY,
    )


APPS = ("quick", "slow", "broken", "flaky")


class World:
    """What outlives one example: the Redis server, its folder, the apps and the key ring."""

    def __init__(self) -> None:
        # A short folder of our own, so the socket lives in it and keeps its path across
        # restarts (a long path would put it in a fresh runtime folder each time).
        self.root = Path(tempfile.mkdtemp(prefix="prov-sm-"))
        self.installers = self.root / "installers"
        self.effects = self.root / "effects.log"
        _write_apps(self.installers, self.effects)
        self.keys_file = self.root / "hmac.keys"
        self.ring: KeyRing = make_ring(self.keys_file)
        self.binary = find_redis_server()
        self.server: RedisServer = self._start()
        self.url = self.server.url

    def _start(self) -> RedisServer:
        # fsync always: with everysec a SIGKILLed Redis 7.0 can lose acknowledged writes
        # (README, Durability), and this test promises that nothing acknowledged is lost.
        return start_redis(self.root / "redis", binary=self.binary, fsync="always")

    def restart_redis(self, *, crash: bool) -> None:
        """Stop Redis (SIGTERM, or SIGKILL as a crash) and start it on the same data."""
        if crash:
            self.server.kill()
        else:
            self.server.stop()
        self.server = self._start()
        assert self.server.url == self.url, "the socket moved: clients could not reconnect"

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class JobLifecycle(RuleBasedStateMachine):
    """Random submit / kill / restart / wait sequences against the real agent and store."""

    world: ClassVar[World]
    examples: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        type(self).examples += 1
        self.loop = asyncio.new_event_loop()
        self.namespace = f"sm{type(self).examples}x{os.getpid()}"
        self.agent_count = 0
        self.jobs: list[str] = []
        self.agent: Agent | None = None
        self.agent_task: asyncio.Task[None] | None = None
        self.agent_client: aioredis.Redis | None = None
        self.client: aioredis.Redis = self._run(connect(self.world.url))
        self.sync_client = connect_sync(self.world.url)
        self.store = EventStore(self.client, RedisKeys(self.namespace), self.world.ring)
        self._run(self._start_agent())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def _settings(self) -> AgentSettings:
        env = agent_environ(
            redis_url=self.world.url,
            namespace=self.namespace,
            keys_file=self.world.keys_file,
            installers=self.world.installers,
            agent_id=f"agent-{self.agent_count}",
            PROV_LEASE_S="1",
            PROV_KILL_GRACE_S="0.2",
            PROV_SHUTDOWN_GRACE_S="1",
        )
        return AgentSettings.from_env(env)

    async def _start_agent(self) -> None:
        self.agent_count += 1
        self.agent_client = await connect(self.world.url)
        self.agent = Agent(self._settings(), self.agent_client, lambda: self.world.ring)
        self.agent_task = asyncio.create_task(self.agent.run())

    async def _kill_agent(self) -> None:
        """Cancel the agent and its running jobs at once: no drain, no grace."""
        agent, task, client = self.agent, self.agent_task, self.agent_client
        self.agent = self.agent_task = self.agent_client = None
        if agent is None or task is None or client is None:
            return
        agent.stop(immediate=True)  # cancels the job tasks: process groups killed
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=30)
        await client.aclose()

    # -- rules -----------------------------------------------------------------------------

    @rule(app=st.sampled_from(APPS))
    def submit_a_job(self, app: str) -> None:
        job = self._run(submit(self.store, self.world.ring, self.world.installers, app))
        self.jobs.append(job.job_id)

    @rule()
    def kill_the_agent_and_start_another(self) -> None:
        self._run(self._kill_agent())
        self._run(self._start_agent())

    @rule(crash=st.booleans())
    def restart_redis(self, crash: bool) -> None:
        self.world.restart_redis(crash=crash)

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.2]))
    def let_time_pass(self, seconds: float) -> None:
        self._run(asyncio.sleep(seconds))

    # -- checks ----------------------------------------------------------------------------

    @invariant()
    def every_replay_is_intact_and_equals_the_stored_snapshot(self) -> None:
        self._check_records()

    def _check_records(self) -> dict[str, dict[str, str]]:
        """Check every job on one consistent view; return the snapshots.

        The reads use a blocking client, so the event loop (and with it the agent) stands
        still until they are done: the view is what Redis held between two steps.
        """
        keys = self.store.keys
        global_order: dict[str, list[str]] = {}
        for stream_id, fields in self.sync_client.xrange(keys.events):
            event = event_from_fields(fields, stream_id=stream_id.decode())
            global_order.setdefault(event.job_id, []).append(event.event_id)
        assert set(global_order) <= set(self.jobs), "events of a job nobody submitted"
        snapshots: dict[str, dict[str, str]] = {}
        for job_id in self.jobs:
            events = [
                event_from_fields(fields, stream_id=stream_id.decode())
                for stream_id, fields in self.sync_client.xrange(keys.job_events(job_id))
            ]
            raw = self.sync_client.hgetall(keys.job(job_id))
            stored = {key.decode(): value.decode() for key, value in raw.items()}
            snapshots[job_id] = stored
            replayed = replay_events(job_id, events, self.world.ring)
            problems = [*replayed.problems, *snapshot_drift(replayed, stored or None)]
            assert not problems, [str(problem) for problem in problems]
            assert [event.event_id for event in events] == global_order.get(job_id, [])
            terminal = [event for event in events if event.dst in TERMINAL_STATES]
            assert len(terminal) <= 1, [event.trigger for event in events]
        return snapshots

    def teardown(self) -> None:
        try:
            if self.agent is None:
                self._run(self._start_agent())
            self._run(self._drain_and_check())
        finally:
            try:
                self._run(self._kill_agent())
                self._run(self.client.aclose())
                self.sync_client.close()
                self._run(_cancel_leftovers())
                self._run(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()
                # A socket an abruptly cancelled agent left behind is collected here, under
                # this test's warning filters, rather than in whichever test runs next.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ResourceWarning)
                    gc.collect()

    async def _drain_and_check(self) -> None:
        deadline = self.loop.time() + DRAIN_TIMEOUT_S
        while True:
            snapshots = {job_id: (await self.store.snapshot(job_id) or {}) for job_id in self.jobs}
            pending = {
                job_id: snapshot.get("state")
                for job_id, snapshot in snapshots.items()
                if snapshot.get("state") not in TERMINAL_STATES
            }
            if not pending:
                break
            assert self.loop.time() < deadline, f"jobs still pending after the drain: {pending}"
            await asyncio.sleep(0.1)
        states = self._check_records()
        assert self.sync_client.xlen(self.store.keys.dead) == 0

        runs = Counter[tuple[str, str]]()
        if self.world.effects.exists():
            for line in self.world.effects.read_text().splitlines():
                job_id, attempt, _pid = line.split()
                runs[(job_id, attempt)] += 1
        for job_id, snapshot in states.items():
            events = [
                event_from_fields(fields)
                for _id, fields in self.sync_client.xrange(self.store.keys.job_events(job_id))
            ]
            starts = [event.attempt for event in events if event.trigger == "start"]
            ran = sum(count for (job, _), count in runs.items() if job == job_id)
            # Every execution was announced by a `start` event (a killed run may have
            # died before it wrote its line, so fewer is fine, more never is).
            assert ran <= len(starts), (job_id, ran, starts)
            assert all(runs[(job_id, str(attempt))] <= 1 for attempt in starts), job_id
            if snapshot["state"] == "succeeded":
                assert runs[(job_id, snapshot["attempt"])] == 1, (job_id, snapshot)


async def _cancel_leftovers() -> None:
    """End tasks a cancelled agent left behind (a library read in flight), so the loop closes
    clean."""
    leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


# An agent cancelled while redis-py was opening a connection (Redis just restarted) can leave
# that socket for the garbage collector: a process death in the real world, harmless here.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.timeout(600 if FULL else 240)
def test_random_faults_never_break_replay_and_every_job_ends_once():
    world = World()
    JobLifecycle.world = world
    try:
        run_state_machine_as_test(
            JobLifecycle,
            settings=settings(
                settings.default,
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
            ),
        )
    finally:
        world.close()
