"""Benchmark 2: latency of lone jobs on an idle system, against floors measured in the same run.

    .venv/bin/python -m tests.bench.latency [--jobs 500]

A real `provision panel` and one real `provision agent` (concurrency 2) on a private Redis; jobs
are submitted one at a time through `POST /api/install`, each awaited (a blocking XREAD on its
event stream) before the next. Reported: p50 and p99 of submit -> `running` and submit ->
`succeeded` (from the client's clock before the request to the events' `at`, same machine,
millisecond resolution), and of the API's own answer time. Floors, same run: a bare asyncio
loop starting the same script (start, and start to exit), and a constant aiohttp handler
answering the same POST (a separate process, like the panel).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from tests.bench.harness import (
    TERMINAL,
    Process,
    World,
    free_port,
    percentile,
    wait_for_agents,
    wait_for_panel,
    world,
)

TARGETS_MS = {"submit -> running p50": 5.0, "submit -> running p99": 20.0, "API answer p50": 5.0}


async def _times_of(client: aioredis.Redis, key: str) -> dict[str, int]:
    """Block on a job's event stream until its terminal event; the `at` of each state."""
    last, seen = "0-0", {}
    while True:
        reply = await client.xread({key: last}, block=10_000)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                seen[fields[b"dst"].decode()] = int(fields[b"at"])
                if fields[b"dst"] in TERMINAL:
                    return seen


async def lone_jobs(built: World, url: str, token: str, count: int) -> dict[str, list[float]]:
    """Submit `count` jobs one at a time through the API; the three latencies of each."""
    client = aioredis.from_url(built.url)
    figures: dict[str, list[float]] = {"running": [], "succeeded": [], "api": []}
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            for index in range(count + 5):
                body = {"app_id": built.app_ids[index % len(built.app_ids)], "inputs": {}}
                sent = time.time()
                async with session.post(f"{url}/api/install", json=body) as response:
                    answer = await response.json()
                answered = time.time()
                assert response.status == 201, answer
                times = await _times_of(client, built.keys.job_events(answer["job_id"]))
                if index < 5:
                    continue  # warm-up: scripts loaded, connections open
                figures["api"].append((answered - sent) * 1000)
                figures["running"].append(times["running"] - sent * 1000)
                figures["succeeded"].append(times.get("succeeded", float("nan")) - sent * 1000)
    finally:
        await client.aclose()
    return figures


async def floor_start(script: Path, count: int) -> dict[str, list[float]]:
    """A bare asyncio loop starting the script alone: time to started, and to its exit."""
    figures: dict[str, list[float]] = {"start": [], "exit": []}
    for _ in range(count):
        begin = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            "bash",
            str(script),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        started = time.perf_counter()
        await process.communicate()
        figures["start"].append((started - begin) * 1000)
        figures["exit"].append((time.perf_counter() - begin) * 1000)
    return figures


async def floor_api(url: str, count: int) -> list[float]:
    """Answer times of a constant aiohttp handler to the same POST."""
    times = []
    async with aiohttp.ClientSession() as session:
        for index in range(count + 5):
            sent = time.time()
            async with session.post(f"{url}/api/install", json={"app_id": "x"}) as response:
                await response.read()
            if index >= 5:
                times.append((time.time() - sent) * 1000)
    return times


def start_constant_server(built: World) -> tuple[Process, str]:
    """The constant aiohttp handler as its own process."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.bench.constant_server", str(port)]
    process = Process.start(argv, built.environ(), built.folder / "constant.log")
    built.processes.append(process)
    return process, f"http://127.0.0.1:{port}"


async def measure(built: World, count: int) -> dict[str, Any]:
    """Everything benchmark 2 reports, on `built` (which may already hold history)."""
    port = free_port()
    agent = built.start_agent("bench-latency", concurrency=2)
    panel = built.start_panel(port)
    constant, constant_url = start_constant_server(built)
    token = built.admin_token()
    url = f"http://127.0.0.1:{port}"
    client = aioredis.from_url(built.url)
    try:
        await wait_for_agents(client, built, 1)
        await wait_for_panel(url)
        await wait_for_panel(constant_url)
        ours = await lone_jobs(built, url, token, count)
        floors = await floor_start(built.script(), min(count, 200))
        floors["api"] = await floor_api(constant_url, count)
        memory = {"agent": agent.memory_kib(), "panel": panel.memory_kib()}
    finally:
        await client.aclose()
        for process in (agent, panel, constant):
            process.stop()
            built.processes.remove(process)
    return {"ours": ours, "floors": floors, "memory": memory}


def summary(result: dict[str, Any]) -> dict[str, float]:
    """The p50/p99 figures by name."""
    ours, floors = result["ours"], result["floors"]
    figures = {}
    for name, values in (
        ("submit -> running", ours["running"]),
        ("submit -> succeeded", ours["succeeded"]),
        ("API answer", ours["api"]),
        ("floor: asyncio start", floors["start"]),
        ("floor: asyncio start to exit", floors["exit"]),
        ("floor: constant handler answer", floors["api"]),
    ):
        figures[f"{name} p50"] = percentile(values, 0.50)
        figures[f"{name} p99"] = percentile(values, 0.99)
    return figures


def report(figures: dict[str, float], count: int) -> None:
    """Print the latencies with their floors and targets."""
    print(f"Benchmark 2: latency of {count} lone jobs (ms)")
    pairs = {
        "submit -> running": "floor: asyncio start",
        "submit -> succeeded": "floor: asyncio start to exit",
        "API answer": "floor: constant handler answer",
    }
    for name, floor in pairs.items():
        for quantile in ("p50", "p99"):
            key = f"{name} {quantile}"
            value, base = figures[key], figures[f"{floor} {quantile}"]
            target = TARGETS_MS.get(key)
            verdict = ""
            if target is not None:
                verdict = f"target < {target:g} ms: " + ("met" if value < target else "NOT met")
            print(
                f"  {key:<24} {value:8.2f}   {floor:<32} {base:7.2f}   "
                f"x{value / base if base else float('nan'):5.1f}  {verdict}"
            )


def main() -> None:
    """One command: `python -m tests.bench.latency`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args()
    with world(prefix="latency") as built:
        result = asyncio.run(measure(built, args.jobs))
    report(summary(result), args.jobs)


if __name__ == "__main__":
    main()
