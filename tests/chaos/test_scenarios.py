"""Fault scenarios 1-7 of issue 8, each against real processes and a real Redis (AOF on).

Every scenario submits through the panel's HTTP API, injects its faults, waits for the drain
(every job terminal, nothing pending, no retry scheduled) with a deadline, and hands the whole
history to the checker (tests/chaos/checker.py). Sizes: the CI size by default, the issue's
full size with PROV_CHAOS_SCALE=full.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from core.retry import RetryPolicy, delay_for
from statemachine.store import EventStore
from tests.agent_support import wait_until
from tests.chaos.checker import Report, Submission
from tests.chaos.harness import Chaos, job_processes, sized

pytestmark = [pytest.mark.chaos, pytest.mark.redis, pytest.mark.slow]

FAST_RETRY = {"max_retries": 3, "base_delay": 0.5, "factor": 2}


def assert_clean(world: Chaos, report: Report) -> None:
    """Every rule of the checker held; the message carries the report and the logs."""
    assert report.ok, f"{report.as_dict()}\n{world.logs()}"


async def storm(world: Chaos, every_s: float, stop: asyncio.Event, agent_id: str) -> None:
    """SIGKILL the agent every `every_s` until `stop` is set."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if not stop.is_set():
            world.kill_agent(agent_id)


async def events_of(world: Chaos, job_id: str):
    client = await world.client()
    try:
        return await EventStore(client, world.keys, world.ring).job_events(job_id)
    finally:
        await client.aclose()


async def states(world: Chaos) -> dict[str, str]:
    client = await world.client()
    try:
        ids = [raw.decode() for raw in await client.zrange(world.keys.jobs_index, 0, -1)]
        found = {}
        for job_id in ids:
            state = await client.hget(world.keys.job(job_id), "state")
            found[job_id] = state.decode() if state else ""
        return found
    finally:
        await client.aclose()


async def post_install(world: Chaos, app_id: str) -> int | None:
    """One submission straight to the panel; its status, or None without an answer."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        record = await world.submit(session, app_id)
    return record.status


# --- the harness can fail ---------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_0_the_checker_catches_faults_planted_in_a_real_history(make_world):
    world = await make_world()
    app = world.app("plain")
    world.start_agent("agent-a")
    await world.submit_many([app], 10)
    await world.drain(timeout_s=120)
    assert_clean(world, await world.check())
    victim, doubled = world.submissions[0].job_id, world.submissions[1].job_id
    assert victim is not None and doubled is not None
    client = await world.client()
    try:
        # 1. a terminal event deleted from prov:events
        for stream_id, fields in await client.xrange(world.keys.events):
            if fields[b"job_id"].decode() == victim and fields[b"dst"] == b"succeeded":
                await client.xdel(world.keys.events, stream_id)
    finally:
        await client.aclose()
    # 2. a duplicated run in the effect log; 3. an acknowledged job that was never created
    with world.effects.open("a") as effects:
        effects.write(f"{doubled} 1 4242\n")
    world.submissions.append(Submission(app, "acknowledged", 201, "01NEVERCREATED0000000000000"))
    report = await world.check()
    assert report.lost == sorted([victim, "01NEVERCREATED0000000000000"])
    assert report.never_created == ["01NEVERCREATED0000000000000"]
    assert report.extra_runs == [
        f"{doubled}: 2 runs but 1 starts",
        f"{doubled}: attempt 1 ran 2x, started 1x",
    ]
    assert not report.ok


# --- 1 ----------------------------------------------------------------------------------------


@pytest.mark.timeout(900)
async def test_1_baseline_every_acknowledged_job_ends_once_and_runs_once(make_world):
    world = await make_world()
    apps = [world.app(f"quick{n}") for n in range(4)]
    world.start_agent("agent-a", PROV_AGENT_CONCURRENCY="4")
    world.start_agent("agent-b", PROV_AGENT_CONCURRENCY="4")
    jobs = sized(300, 1000)
    await world.submit_many(apps, jobs)
    await world.drain(timeout_s=sized(240, 900))
    report = await world.check()
    world.summarise("1-baseline", report)
    assert_clean(world, report)
    assert report.acknowledged == jobs
    assert report.runs == jobs
    assert report.reruns_after_agent_death == 0


# --- 2 ----------------------------------------------------------------------------------------


@pytest.mark.timeout(1800)
async def test_2_an_agent_killed_every_two_seconds_loses_and_doubles_nothing(make_world):
    world = await make_world()
    apps = [world.app(f"short{n}", sleep_s=0.2, retry=FAST_RETRY) for n in range(4)]
    world.start_agent("agent-a", PROV_AGENT_CONCURRENCY="4")
    world.supervise()
    stop = asyncio.Event()
    killer = asyncio.create_task(storm(world, 2.0, stop, "agent-a"))
    jobs = sized(200, 1000)
    await world.submit_many(apps, jobs, parallel=2)
    # Keep killing while the queue drains, so kills land mid-run, not only mid-submit.
    await wait_until(
        lambda: world.faults.get("agent_sigkill", 0) >= sized(8, 30),
        timeout_s=600,
        interval_s=0.5,
        message="enough kills",
    )
    stop.set()
    await killer
    await world.drain(timeout_s=sized(300, 1200))
    report = await world.check()
    world.summarise("2-agent-kill-storm", report)
    assert_clean(world, report)
    assert report.acknowledged == jobs
    assert world.faults["agent_sigkill"] >= sized(8, 30)


# --- 3 ----------------------------------------------------------------------------------------


async def outage(world: Chaos, app_id: str, *, crash: bool) -> None:
    """Stop Redis (cleanly or SIGKILL), check the panel answers 503, start it again."""
    if crash:
        world.kill_redis()
    else:
        world.stop_redis()
    status = await post_install(world, app_id)
    assert status == 503, f"the panel answered {status} while Redis was down"
    await asyncio.sleep(1.0)  # let the submitter and the agents meet the outage too
    world.start_redis()


@pytest.mark.timeout(1800)
async def test_3_redis_stopped_and_killed_loses_no_acknowledged_job(make_world):
    # appendfsync always (PROV_REDIS_FSYNC=always): with everysec, Redis 7.0 postpones the
    # AOF write while the previous background fsync runs and answers the client meanwhile,
    # so a SIGKILL can lose acknowledged jobs; this suite found exactly that (docs/chaos.md).
    world = await make_world(fsync="always")
    apps = [world.app(f"steady{n}", retry=FAST_RETRY) for n in range(4)]
    world.start_agent("agent-a", PROV_AGENT_CONCURRENCY="4")
    world.start_agent("agent-b", PROV_AGENT_CONCURRENCY="4")
    world.supervise()
    jobs = sized(300, 1000)
    third = jobs // 3
    await world.submit_many(apps, third)
    submitting = asyncio.create_task(
        world.submit_many(apps, third, parallel=2, until_answered=True)
    )
    await asyncio.sleep(0.3)
    await outage(world, apps[0], crash=False)
    await submitting
    submitting = asyncio.create_task(
        world.submit_many(apps, jobs - 2 * third, parallel=2, until_answered=True)
    )
    await asyncio.sleep(0.3)
    await outage(world, apps[1], crash=True)
    await submitting
    await world.drain(timeout_s=sized(300, 900))
    report = await world.check()
    world.summarise("3-redis-restarts", report)
    assert_clean(world, report)
    assert world.faults == {"redis_clean_stop": 1, "redis_sigkill": 1}
    # The two probes during the outages were refused with 503 and stored nothing.
    assert [s.status for s in world.submissions].count(503) >= 2
    assert report.acknowledged == jobs  # the submitter sent each again until it was answered


@pytest.mark.timeout(300)
async def test_3_a_run_that_ends_while_redis_is_down_is_recorded_once_not_run_again(make_world):
    # The outcome cannot be written while Redis is down; the agent must keep it and write it
    # once Redis is back, not leave the entry to be reclaimed as agent_lost and run twice.
    world = await make_world(fsync="always", lease_s=2.0)
    app = world.app("brief", sleep_s=1, retry=FAST_RETRY)
    world.start_agent("agent-a")
    await world.submit_many([app], 1)
    await wait_until(world.job_ids_in_effects, timeout_s=30, message="the run started")
    world.stop_redis()
    await asyncio.sleep(5)  # the run ends meanwhile, and the outage outlasts the lease
    world.start_redis()
    await world.drain(timeout_s=120)
    report = await world.check()
    world.summarise("3-outcome-during-outage", report)
    assert_clean(world, report)
    assert report.runs == 1
    job_id = world.submissions[0].job_id
    assert [e.trigger for e in await events_of(world, job_id)][-2:] == ["start", "succeed"]


# --- 4 ----------------------------------------------------------------------------------------


@pytest.mark.timeout(900)
async def test_4_redis_paused_past_the_lease_hangs_nothing_and_doubles_no_run(make_world):
    world = await make_world(lease_s=3.0)
    apps = [world.app(f"paced{n}", sleep_s=1, retry=FAST_RETRY) for n in range(4)]
    world.start_agent("agent-a", PROV_AGENT_CONCURRENCY="4")
    world.start_agent("agent-b", PROV_AGENT_CONCURRENCY="4")
    world.supervise()
    jobs = sized(60, 1000)
    submitting = asyncio.create_task(world.submit_many(apps, jobs, parallel=2))
    await wait_until(
        lambda: len(world.job_ids_in_effects()) >= 4, timeout_s=60, message="jobs running"
    )
    assert world.redis is not None
    world.redis.pause()
    world.fault("redis_sigstop_10s")
    await asyncio.sleep(10)
    world.redis.resume()
    await submitting
    await world.drain(timeout_s=sized(300, 1500))
    report = await world.check()
    world.summarise("4-redis-paused", report)
    assert_clean(world, report)
    assert "agent_died_unasked" not in world.faults, world.logs()
    assert report.reruns_after_agent_death == 0


# --- 5 ----------------------------------------------------------------------------------------


async def long_jobs(world: Chaos, count: int) -> Report:
    # One retry: without renewal every lease lapses, and each lapse costs another run.
    retry = {"max_retries": 1, "base_delay": 0.5, "factor": 2}
    apps = [world.app(f"long{n}", sleep_s=6, retry=retry) for n in range(count)]
    world.start_agent("agent-a", PROV_AGENT_CONCURRENCY=str(count))
    world.start_agent("agent-b", PROV_AGENT_CONCURRENCY=str(count))
    await world.submit_many(apps, count)
    await world.drain(timeout_s=120)
    return await world.check()


@pytest.mark.timeout(300)
async def test_5_with_two_agents_a_job_three_times_the_lease_runs_once(make_world):
    world = await make_world(lease_s=2.0)
    report = await long_jobs(world, sized(3, 10))
    world.summarise("5-long-jobs", report)
    assert_clean(world, report)
    assert report.runs == report.acknowledged


@pytest.mark.timeout(300)
async def test_5_without_lease_renewal_the_checker_sees_the_double_run(make_world):
    world = await make_world(lease_s=2.0, renew_leases=False)
    report = await long_jobs(world, sized(3, 10))
    world.summarise("5-long-jobs-no-renewal", report)
    assert not report.ok
    assert report.unexplained_reruns, report.as_dict()
    assert report.runs > report.acknowledged


# --- 6 ----------------------------------------------------------------------------------------


@pytest.mark.timeout(1200)
async def test_6_flaky_installers_retry_as_the_policy_says_across_agent_restarts(make_world):
    world = await make_world()
    fails = 2
    retry = {"max_retries": 5, "base_delay": float(sized(1, 10)), "factor": 2.0}
    policy = RetryPolicy(5, retry["base_delay"], retry["factor"])
    apps = [world.app(f"flaky{n}", fail_first=fails, retry=retry) for n in range(4)]
    world.start_agent("agent-a", PROV_AGENT_CONCURRENCY="4")
    world.supervise()
    jobs = sized(12, 40)
    await world.submit_many(apps, jobs)
    for _ in range(sized(3, 6)):
        # Kill while jobs wait for their retry: the due times live in Redis, not in the agent.
        found = await wait_until(
            lambda: _waiting_or_done(world), timeout_s=120, interval_s=0.1, message="retry_wait"
        )
        if found == "done":
            break
        world.kill_agent("agent-a")
        await asyncio.sleep(0.5)
    await world.drain(timeout_s=sized(300, 900))
    report = await world.check()
    world.summarise("6-flaky-retries", report)
    assert_clean(world, report)
    for submission in world.submissions:
        assert submission.job_id is not None
        events = await events_of(world, submission.job_id)
        assert events[-1].trigger == "succeed", [e.trigger for e in events]
        retries = [e for e in events if e.trigger == "retry"]
        starts = [e for e in events if e.trigger == "start"]
        # Attempts 1..fails exit 2; an agent killed mid-run costs an attempt too (agent_lost).
        for retry_event in retries:
            reason = retry_event.detail["reason"]
            assert reason == "agent_lost" or (
                reason == "install_error" and retry_event.attempt <= fails
            ), retry_event
            assert retry_event.detail["delay_s"] == delay_for(policy, retry_event.attempt)
            following = next(s for s in starts if s.attempt == retry_event.attempt + 1)
            assert following.at >= retry_event.detail["next_retry_at"]
        assert events[-1].attempt > fails
        assert len(starts) == len(retries) + 1
    assert world.faults["agent_sigkill"] >= 1


async def _waiting_or_done(world: Chaos) -> str:
    found = set((await states(world)).values())
    if "retry_wait" in found:
        return "waiting"
    return "done" if found <= {"succeeded", "failed"} else ""


# --- 7 ----------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_7_sigterm_within_the_grace_finishes_the_job_and_takes_no_new_one(make_world):
    world = await make_world()
    app = world.app("slow", sleep_s=4)
    world.start_agent("agent-a", PROV_SHUTDOWN_GRACE_S="30")
    await world.submit_many([app], 1)
    await wait_until(world.job_ids_in_effects, timeout_s=30, message="job started")
    await world.submit_many([app], 1)
    code = await world.terminate_agent("agent-a", timeout_s=60)
    assert code == 0, world.logs()
    first, second = (s.job_id for s in world.submissions)
    assert (await states(world)) == {first: "succeeded", second: "queued"}
    assert job_processes({first}) == []
    world.start_agent("agent-b")
    await world.drain(timeout_s=60)
    report = await world.check()
    world.summarise("7-sigterm-within-grace", report)
    assert_clean(world, report)
    assert report.runs == 2


@pytest.mark.timeout(300)
async def test_7_sigterm_past_the_grace_leaves_the_job_for_reclaim_and_no_orphan(make_world):
    world = await make_world()
    # A daemon-like child that leaves the process group must be swept too.
    app = world.app("stuck", retry=FAST_RETRY)
    install = world.installers / app / "install.sh"
    install.write_text(
        install.read_text()
        + '\nif [ "$PROV_ATTEMPT" -eq 1 ]; then setsid sleep 300 & sleep 300; fi\n'
    )
    world.start_agent("agent-a", PROV_SHUTDOWN_GRACE_S="1", PROV_KILL_GRACE_S="1")
    await world.submit_many([app], 1)
    job_id = world.submissions[0].job_id
    assert job_id is not None
    await wait_until(lambda: len(job_processes({job_id})) >= 3, timeout_s=30, message="run")
    other = world.app("other")
    await world.submit_many([other], 1)
    code = await world.terminate_agent("agent-a", timeout_s=60)
    assert code == 0, world.logs()
    assert job_processes({job_id}) == [], "the stopped agent left the job's processes"
    second = world.submissions[1].job_id
    # Left for reclaim, and the job queued meanwhile was not taken by the stopping agent.
    assert await states(world) == {job_id: "running", second: "queued"}
    world.start_agent("agent-b", PROV_AGENT_CONCURRENCY="2")
    await world.drain(timeout_s=120)
    report = await world.check()
    world.summarise("7-sigterm-past-grace", report)
    assert_clean(world, report)
    assert report.reruns_after_agent_death == 1
    assert [e.detail.get("reason") for e in await events_of(world, job_id)].count("agent_lost") == 1
