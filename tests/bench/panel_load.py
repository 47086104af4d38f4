"""Benchmark 3: the panel under load, against a constant aiohttp handler in the same run.

    .venv/bin/python -m tests.bench.panel_load [--requests 3000] [--clients 16]

A real `provision panel` on a private Redis (no agent: the submitted jobs simply queue) and the
constant handler of `tests.bench.constant_server`, each its own process. An aiohttp client
pool of `--clients` connections sends `--requests` requests as fast as they are answered:
`POST /api/install` (strict parsing, validation, sealing, signing, the atomic write) and
`GET /apps/<id>` (the rendered form), then the same requests to the constant handler.
Reported: requests/s and p50/p99 answer times, and the panel's memory (VmRSS/VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp

from tests.bench.harness import free_port, median, percentile, wait_for_panel, world
from tests.bench.latency import start_constant_server

TARGETS = {"POST /api/install": 0.40, "GET /apps/<id>": 0.50}


async def load(
    url: str,
    method: str,
    path: str,
    *,
    body: Any,
    headers: dict[str, str],
    count: int,
    clients: int,
) -> tuple[float, list[float]]:
    """Requests/s and answer times (ms) of `count` requests over `clients` connections."""
    times: list[float] = []
    left = [count]
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                sent = time.perf_counter()
                async with session.request(method, url + path, json=body) as response:
                    await response.read()
                    if response.status not in (200, 201):
                        raise RuntimeError(f"{method} {path}: {response.status}")
                times.append((time.perf_counter() - sent) * 1000)

        await asyncio.gather(*(worker() for _ in range(min(clients, count))))  # warm-up
        times.clear()
        left[0] = count
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return count / elapsed, times


async def measure(count: int, clients: int, rounds: int) -> dict[str, Any]:
    """Both endpoints against the panel and the constant handler, `rounds` times."""
    figures: dict[str, list[float]] = {}
    memory: list[tuple[int, int]] = []
    with world(prefix="panel") as built:
        port = free_port()
        panel = built.start_panel(port)
        _constant, constant_url = start_constant_server(built)
        token = built.admin_token()
        url = f"http://127.0.0.1:{port}"
        await wait_for_panel(url)
        await wait_for_panel(constant_url)
        memory.append(panel.memory_kib())
        headers = {"Authorization": f"Bearer {token}"}
        app_id = built.app_ids[0]
        cases = {
            "POST /api/install": ("POST", "/api/install", {"app_id": app_id, "inputs": {}}),
            "GET /apps/<id>": ("GET", f"/apps/{app_id}", None),
        }
        for _ in range(rounds):
            for name, (method, path, body) in cases.items():
                for who, base in (("panel", url), ("floor", constant_url)):
                    rate, times = await load(
                        base,
                        method,
                        path,
                        body=body,
                        headers=headers,
                        count=count,
                        clients=clients,
                    )
                    figures.setdefault(f"{name} {who} req/s", []).append(rate)
                    figures.setdefault(f"{name} {who} p50", []).append(percentile(times, 0.5))
                    figures.setdefault(f"{name} {who} p99", []).append(percentile(times, 0.99))
            memory.append(panel.memory_kib())
    return {"figures": {k: median(v) for k, v in figures.items()}, "memory": memory}


def report(result: dict[str, Any], count: int, clients: int, rounds: int) -> None:
    """Print requests/s and p99 with the floor's and the ratio."""
    figures = result["figures"]
    print(f"Benchmark 3: panel, {count} requests x {clients} clients, medians of {rounds} round(s)")
    for name, target in TARGETS.items():
        ours, floor = figures[f"{name} panel req/s"], figures[f"{name} floor req/s"]
        ratio = ours / floor
        verdict = "met" if ratio >= target else "NOT met"
        print(
            f"  {name:<18} {ours:8.1f} req/s  floor {floor:8.1f}  ratio {ratio:5.2f}"
            f"  (target >= {target:.2f}: {verdict})"
        )
        print(
            f"  {'':<18} p50 {figures[f'{name} panel p50']:6.2f} ms  "
            f"p99 {figures[f'{name} panel p99']:6.2f} ms   floor p50 "
            f"{figures[f'{name} floor p50']:5.2f}  p99 {figures[f'{name} floor p99']:5.2f}"
        )
    idle, *loaded = result["memory"]
    peak = max(hwm for _rss, hwm in result["memory"])
    print(
        f"  panel memory: idle VmRSS {idle[0] / 1024:.1f} MiB (VmHWM {idle[1] / 1024:.1f} MiB "
        f"already), after load VmRSS {loaded[-1][0] / 1024:.1f} MiB, peak VmHWM "
        f"{peak / 1024:.1f} MiB (target < 100)"
    )
    # The peak is set at start: the user store hashes its dummy password with argon2's
    # default 64 MiB of working memory; that memory is returned right after.


def main() -> None:
    """One command: `python -m tests.bench.panel_load`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    result = asyncio.run(measure(args.requests, args.clients, args.rounds))
    report(result, args.requests, args.clients, args.rounds)


if __name__ == "__main__":
    main()
