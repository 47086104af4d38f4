"""Benchmark 3: the panel under load, against a constant aiohttp handler in the same run.

    .venv/bin/python -m tests.bench.panel_load [--requests 3000] [--clients 16]
    .venv/bin/python -m tests.bench.panel_load --profile post   # py-spy on the panel

A real `provision panel` on a private Redis (no agent: the submitted jobs simply queue) and the
constant handler of `tests.bench.constant_server`, each its own process. An aiohttp client
pool of `--clients` connections sends `--requests` requests as fast as they are answered:
`POST /api/install` (strict parsing, validation, sealing, signing, the atomic write) and
`GET /apps/<id>` (the rendered form), then the same requests to the constant handler.
Reported: requests/s and p50/p99 answer times, and the panel's memory (VmRSS/VmHWM).
With `--profile post|form`, py-spy samples the panel during that case only, and the hottest
frames (inclusive and self) are printed after the figures, so an optimisation starts from a
measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.bench.harness import free_port, median, percentile, wait_for_panel, world
from tests.bench.latency import start_constant_server
from tests.bench.profile_agent import PY_SPY, summarise

TARGETS = {"POST /api/install": 0.40, "GET /apps/<id>": 0.50}
PROFILE_CASES = {"post": "POST /api/install", "form": "GET /apps/<id>"}
PROFILE_RAW = Path("/tmp") / "provision-panel-profile.txt"


@dataclass(frozen=True, slots=True)
class Load:
    """One timed pass: requests/s, answer times (ms), CPU per request (us) of both sides."""

    rate: float
    times: list[float]
    server_cpu_us: float
    client_cpu_us: float


async def load(
    url: str,
    method: str,
    path: str,
    *,
    body: Any,
    headers: dict[str, str],
    count: int,
    clients: int,
    server_pid: int | None = None,
) -> Load:
    """`count` requests over `clients` connections (after a warm-up pass of as many);
    the server's CPU per request when its `server_pid` is given (else 0)."""
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
        server_cpu = cpu_seconds(server_pid) if server_pid is not None else 0.0
        own_cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        # CPU per request, of the server and of this load generator: steadier than
        # requests/s on a shared machine, and it shows who uses the two cores.
        server_now = cpu_seconds(server_pid) if server_pid is not None else 0.0
        server_us = (server_now - server_cpu) / count * 1e6
        own_us = (time.process_time() - own_cpu) / count * 1e6
    return Load(count / elapsed, times, server_us, own_us)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_py_spy(pid: int) -> subprocess.Popen[bytes]:
    """py-spy sampling process `pid` into PROFILE_RAW until stopped."""
    spy = [str(PY_SPY), "record", "--pid", str(pid), "--format", "raw"]
    spy += ["--output", str(PROFILE_RAW), "--rate", "250", "--nonblocking"]
    return subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    """Stop py-spy; on SIGINT it writes what it sampled."""
    spy.send_signal(2)
    spy.wait(timeout=30)


async def measure(
    count: int, clients: int, rounds: int, profile: str | None = None
) -> dict[str, Any]:
    """Both endpoints against the panel and the constant handler, `rounds` times."""
    figures: dict[str, list[float]] = {}
    memory: list[tuple[int, int]] = []
    with world(prefix="panel") as built:
        port = free_port()
        panel = built.start_panel(port)
        constant, constant_url = start_constant_server(built)
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
                    sampled = (
                        who == "panel" and profile is not None and PROFILE_CASES[profile] == name
                    )
                    spy = start_py_spy(panel.pid) if sampled else None
                    done = await load(
                        base,
                        method,
                        path,
                        body=body,
                        headers=headers,
                        count=count,
                        clients=clients,
                        server_pid=panel.pid if who == "panel" else constant.pid,
                    )
                    rate, times = done.rate, done.times
                    figures.setdefault(f"{name} {who} cpu", []).append(done.server_cpu_us)
                    figures.setdefault(f"{name} {who} client cpu", []).append(done.client_cpu_us)
                    if spy is not None:
                        stop_py_spy(spy)
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
        print(
            f"  {'':<18} CPU per request: server {figures[f'{name} panel cpu']:5.0f} us "
            f"(floor {figures[f'{name} floor cpu']:4.0f}), load generator "
            f"{figures[f'{name} panel client cpu']:4.0f} us "
            f"(floor {figures[f'{name} floor client cpu']:4.0f})"
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
    parser.add_argument("--profile", choices=sorted(PROFILE_CASES), default=None)
    parser.add_argument("--top", type=int, default=40, help="frames printed with --profile")
    args = parser.parse_args()
    result = asyncio.run(measure(args.requests, args.clients, args.rounds, args.profile))
    report(result, args.requests, args.clients, args.rounds)
    if args.profile is not None:
        summarise(PROFILE_RAW, args.top)


if __name__ == "__main__":
    main()
