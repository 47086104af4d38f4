"""Benchmark 6: memory of `provision agent` and `provision panel`, idle, under load, and with
10,000 jobs waiting in the queue.

    .venv/bin/python -m tests.bench.memory [--queued 10000]

VmRSS is sampled every 0.2 s from /proc/<pid>/status while each phase runs; VmHWM is the
kernel's own peak. Phases, on one private Redis:
1. idle: a real panel and agent (concurrency 2), started and left alone for 3 s;
2. load: 2,000 `POST /api/install` from 16 clients while the agent runs the jobs;
3. queued: the agent stopped, `--queued` jobs submitted, a fresh agent started and sampled
   while it drains them all (its jobs/s is benchmark 5's "agent with 10,000 queued jobs").
The floor is a bare Python interpreter that imported the same libraries (redis, aiohttp,
structlog, yaml, cryptography), measured the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from tests.bench.harness import (
    Process,
    World,
    free_port,
    wait_for_agents,
    wait_for_events,
    wait_for_panel,
    world,
)
from tests.bench.panel_load import load
from tests.bench.throughput import EVENTS_PER_JOB, submit_many

AGENT_TARGET_MIB = 60
PANEL_TARGET_MIB = 100
_FLOOR_IMPORTS = (
    "import redis.asyncio, aiohttp.web, structlog, yaml, transitions, jinja2, "
    "cryptography.hazmat.primitives.ciphers.aead"
)


@dataclass
class Sampled:
    """Largest VmRSS seen while sampling, and the VmHWM at the end (KiB)."""

    max_rss: int = 0
    hwm: int = 0

    def line(self, name: str) -> str:
        """A printed line in MiB."""
        rss, hwm = self.max_rss / 1024, self.hwm / 1024
        return f"  {name:<44} VmRSS max {rss:6.1f} MiB   VmHWM {hwm:6.1f} MiB"


async def sample(process: Process, stop: asyncio.Event, period_s: float = 0.2) -> Sampled:
    """Sample `process` until `stop` is set."""
    seen = Sampled()
    while True:
        rss, hwm = process.memory_kib()
        seen.max_rss, seen.hwm = max(seen.max_rss, rss), max(seen.hwm, hwm)
        if stop.is_set():
            return seen
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period_s)


async def drain_queue(built: World, queued: int) -> tuple[float, Sampled]:
    """Queue `queued` jobs with no agent, then one agent (x2) drains them: jobs/s, memory."""
    client = aioredis.from_url(built.url)
    try:
        before = int(await client.xlen(built.keys.events))
        await submit_many(built, queued)
        agent = built.start_agent("bench-drain", concurrency=2)
        started = time.time()
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(agent, stop))
        await wait_for_agents(client, built, 1)
        await wait_for_events(client, built, before + EVENTS_PER_JOB * queued, timeout_s=1800)
        elapsed = time.time() - started
        stop.set()
        during = await sampler
    finally:
        await client.aclose()
    agent.stop()
    built.processes.remove(agent)
    return queued / elapsed, during


async def measure(queued: int) -> dict[str, Sampled | float]:
    """The three phases."""
    results: dict[str, Sampled | float] = {}
    floor = subprocess.Popen(  # noqa: ASYNC220 - a measured process, started once
        [sys.executable, "-c", _FLOOR_IMPORTS + "; import time; time.sleep(3)"]
    )
    await asyncio.sleep(2.5)
    floor_process = Process(floor, Path("/dev/null"))
    rss, hwm = floor_process.memory_kib()
    floor.wait()
    results["floor: python + the panel's libraries"] = Sampled(rss, hwm)
    with world(prefix="memory") as built:
        port = free_port()
        agent = built.start_agent("bench-memory", concurrency=2)
        panel = built.start_panel(port)
        token = built.admin_token()
        url = f"http://127.0.0.1:{port}"
        client = aioredis.from_url(built.url)
        await wait_for_agents(client, built, 1)
        await wait_for_panel(url)
        stop = asyncio.Event()
        samplers = [asyncio.create_task(sample(p, stop)) for p in (agent, panel)]
        await asyncio.sleep(3)
        stop.set()
        results["agent idle"], results["panel idle"] = await asyncio.gather(*samplers)
        stop = asyncio.Event()
        samplers = [asyncio.create_task(sample(p, stop)) for p in (agent, panel)]
        before = int(await client.xlen(built.keys.events))
        headers = {"Authorization": f"Bearer {token}"}
        body = {"app_id": built.app_ids[0], "inputs": {}}
        count = 2000
        await load(url, "POST", "/api/install", body=body, headers=headers, count=count, clients=16)
        await wait_for_events(client, built, before + EVENTS_PER_JOB * (count + 16))
        stop.set()
        results["agent under load"], results["panel under load"] = await asyncio.gather(*samplers)
        await client.aclose()
        agent.stop()
        built.processes.remove(agent)
        rate, during = await drain_queue(built, queued)
        results[f"agent draining {queued} queued jobs"] = during
        results["drain jobs/s"] = rate
    return results


def report(results: dict[str, Sampled | float], queued: int) -> None:
    """Print each phase's memory against the targets."""
    print("Benchmark 6: memory (peak VmRSS sampled every 0.2 s, and the kernel's VmHWM)")
    for name, value in results.items():
        if isinstance(value, Sampled):
            target = AGENT_TARGET_MIB if name.startswith("agent") else PANEL_TARGET_MIB
            verdict = ""
            if not name.startswith("floor"):
                met = value.max_rss / 1024 < target
                verdict = f"  (RSS target < {target} MiB: {'met' if met else 'NOT met'})"
            print(value.line(name) + verdict)
    print(f"  agent drained {queued} queued jobs at {results['drain jobs/s']:.1f} jobs/s")


def main() -> None:
    """One command: `python -m tests.bench.memory`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=10_000)
    args = parser.parse_args()
    report(asyncio.run(measure(args.queued)), args.queued)


if __name__ == "__main__":
    main()
