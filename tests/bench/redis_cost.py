"""Benchmark 4: what one no-op job costs in Redis, from submit to its terminal state.

    .venv/bin/python -m tests.bench.redis_cost [--jobs 50]

Real `provision panel` and `provision agent` (concurrency 2) processes, each with the round-trip
counter of `tests/bench/rtcount` on its PYTHONPATH, on a private Redis. Jobs are submitted one
at a time through `POST /api/install` and each is awaited before the next, so every round trip
in the window belongs to one job or to a periodic duty (heartbeat, scheduler, lease renewal,
cancel watch), which are counted apart. Also: commands Redis executed (INFO commandstats
deltas, commands inside Lua scripts included, an idle window of the same length subtracted)
and the bytes a job leaves behind (MEMORY USAGE of its keys and the growth of shared ones).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from tests.bench.harness import TERMINAL, World, free_port, wait_for_agents, wait_for_panel, world

RTCOUNT = Path(__file__).parent / "rtcount"
TARGET_ROUND_TRIPS = 12


def _is_duty(cmds: list[list[str]], keys: Any) -> str | None:
    """The periodic duty a round trip belongs to, or None when it is on the job's path."""
    first = cmds[0] if cmds else [""]
    name = first[0].upper()
    key = first[1] if len(first) > 1 else ""
    if name in {"HSET", "HDEL"} and key == keys.agents:
        return "heartbeat"
    if name == "ZRANGEBYSCORE" or (name == "HMGET" and len(cmds) > 0):
        return "scheduler/expiry sweep"
    if name == "HGET" and all(len(c) > 2 and c[2] == "cancel_requested" for c in cmds):
        return "cancel watch"
    if name == "EVALSHA" and _script_of(first) == "renew_leases":
        return "lease renewal"
    if name in {"PING", "CONFIG", "CLIENT", "SCRIPT"}:
        return "connection upkeep"
    return None


def _load_trips(path: Path, start: float, end: float) -> list[list[list[str]]]:
    trips = []
    for line in path.read_text().splitlines():
        trip = json.loads(line)
        if start <= trip["t"] <= end:
            trips.append(trip["cmds"])
    return trips


# Each Lua script of the project by its SHA-1 (what EVALSHA names), so that round trips say
# which script they ran: the panel's authentication, the atomic transition, the agent's read.
SCRIPTS = {
    hashlib.sha1(path.read_bytes()).hexdigest(): path.stem
    for path in Path(__file__).parents[2].glob("*/**/lua/*.lua")
}


def _script_of(cmd: list[str]) -> str:
    return SCRIPTS.get(cmd[1], "?") if len(cmd) > 1 else "?"


def _label(cmds: list[list[str]]) -> str:
    names = [
        f"EVALSHA {_script_of(c)}" if c[0].upper() == "EVALSHA" else c[0].upper() for c in cmds
    ]
    if len(names) == 1:
        return names[0]
    return "pipeline(" + "+".join(f"{n}x{k}" for n, k in Counter(names).items()) + ")"


async def _commandstats(client: aioredis.Redis) -> Counter[str]:
    stats = await client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


async def _memory(client: aioredis.Redis, key: str) -> int:
    return int(await client.memory_usage(key, samples=0) or 0)


async def _await_terminal(client: aioredis.Redis, key: str) -> int:
    """Block on the job's event stream until its terminal event; returns XREAD calls made."""
    last, calls = "0-0", 0
    while True:
        calls += 1
        reply = await client.xread({key: last}, block=5000)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                if fields[b"dst"] in TERMINAL:
                    return calls


async def measure(built: World, jobs: int) -> dict[str, Any]:
    """Run `jobs` lone jobs through the real processes and count what they cost."""
    agent_file = built.folder / "agent.trips"
    panel_file = built.folder / "panel.trips"
    port = free_port()
    agent = built.start_agent("bench-agent", PYTHONPATH=str(RTCOUNT), BENCH_RT_FILE=str(agent_file))
    panel = built.start_panel(port, PYTHONPATH=str(RTCOUNT), BENCH_RT_FILE=str(panel_file))
    token = built.admin_token()
    client = aioredis.from_url(built.url)
    keys = built.keys
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_for_agents(client, built, 1)
        await wait_for_panel(url)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:

            async def one() -> tuple[str, int]:
                body = {"app_id": built.app_ids[0], "inputs": {}}
                async with session.post(f"{url}/api/install", json=body) as response:
                    assert response.status == 201, await response.text()
                    job_id = (await response.json())["job_id"]
                return job_id, await _await_terminal(client, keys.job_events(job_id))

            for _ in range(3):  # scripts loaded, connections open, caches warm
                await one()
            events_before = await _memory(client, keys.events)
            stream_before = await _memory(client, keys.jobs_stream("local"))
            index_before = await _memory(client, keys.jobs_index)
            stats_before = await _commandstats(client)
            start = time.time()
            job_ids, xreads = [], 0
            for _ in range(jobs):
                job_id, calls = await one()
                job_ids.append(job_id)
                xreads += calls
            end = time.time()
            stats_after = await _commandstats(client)
            await asyncio.sleep(end - start)  # the same length of idle time, for the duties
            stats_idle = await _commandstats(client)
        per_job_keys = {
            "snapshot hash": [await _memory(client, keys.job(j)) for j in job_ids],
            "job events stream": [await _memory(client, keys.job_events(j)) for j in job_ids],
            "job log stream": [await _memory(client, keys.job_log(j)) for j in job_ids],
        }
        shared_growth = {
            "global events stream": (await _memory(client, keys.events) - events_before) / jobs,
            "jobs stream (envelopes)": (
                await _memory(client, keys.jobs_stream("local")) - stream_before
            )
            / jobs,
            "jobs index": (await _memory(client, keys.jobs_index) - index_before) / jobs,
        }
        states = Counter([(await client.hget(keys.job(j), "state")) for j in job_ids])
    finally:
        await client.aclose()
        agent.stop()
        panel.stop()
    busy = stats_after - stats_before
    idle = stats_idle - stats_after
    busy["xread"] -= xreads
    busy["info"] -= 1
    idle["info"] -= 1
    commands = Counter({k: v for k, v in (busy - idle).items() if v > 0})
    return {
        "jobs": jobs,
        "states": {k.decode(): v for k, v in states.items()},
        "agent": _load_trips(agent_file, start, end),
        "panel": _load_trips(panel_file, start, end),
        "commands": commands,
        "memory": {name: sum(v) / len(v) for name, v in per_job_keys.items()},
        "shared": shared_growth,
    }


def report(result: dict[str, Any], keys: Any) -> None:
    """Print the round trips, commands and bytes per job."""
    jobs = result["jobs"]
    print(f"Benchmark 4: Redis cost of one no-op job ({jobs} lone jobs, states {result['states']})")
    job_path: Counter[str] = Counter()
    duties: Counter[str] = Counter()
    for cmds in result["agent"]:
        duty = _is_duty(cmds, keys)
        if duty is None:
            job_path[_label(cmds)] += 1
        else:
            duties[duty] += 1
    panel: Counter[str] = Counter(_label(cmds) for cmds in result["panel"])
    panel_total = sum(panel.values()) / jobs
    agent_total = sum(job_path.values()) / jobs
    print(f"  round trips per job, panel (API request incl. auth): {panel_total:.2f}")
    for label, count in panel.most_common():
        print(f"      {count / jobs:6.2f}  {label}")
    print(f"  round trips per job, agent (job path):               {agent_total:.2f}")
    for label, count in job_path.most_common():
        print(f"      {count / jobs:6.2f}  {label}")
    print(f"  periodic duties in the window (not per job): {dict(duties)}")
    submit_trips = panel["EVALSHA transition"] / jobs
    total = submit_trips + agent_total
    verdict = "met" if total <= TARGET_ROUND_TRIPS else "NOT met"
    print(
        f"  submit (the atomic write) + agent = {total:.2f} round trips per job"
        f"  (target <= {TARGET_ROUND_TRIPS}: {verdict}); with the API's auth: "
        f"{panel_total + agent_total:.2f}"
    )
    commands = result["commands"]
    print(
        f"  commands executed by Redis per job (Lua-inner included, idle subtracted): "
        f"{sum(commands.values()) / jobs:.1f}"
    )
    print("      " + ", ".join(f"{k} {v / jobs:.2f}" for k, v in commands.most_common()))
    kept = sum(result["memory"].values()) + sum(result["shared"].values())
    print(f"  bytes left behind per job: {kept:,.0f}")
    for name, size in [*result["memory"].items(), *result["shared"].items()]:
        print(f"      {size:9,.0f}  {name}")


def main() -> None:
    """One command: `python -m tests.bench.redis_cost`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    args = parser.parse_args()
    with world(n_apps=1, prefix="cost") as built:
        result = asyncio.run(measure(built, args.jobs))
        report(result, built.keys)


if __name__ == "__main__":
    main()
