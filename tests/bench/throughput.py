"""Benchmark 1: job throughput of no-op jobs, against floors and peers measured in the same run.

    .venv/bin/python -m tests.bench.throughput [--jobs 2000] [--rounds 3] [--no-peers]

Each round measures, one after the other on a fresh Redis each:
- floor `asyncio`: the script started by a bare asyncio loop, 2 at a time, output read;
- floor `2 processes`: the script started by 2 plain worker processes, no queue at all;
- provision with one `provision agent` (concurrency 2), two agents (concurrency 1 each: two
  scripts at once, as the floor and the peers) and two agents at concurrency 2;
- Celery (Redis broker, prefork, concurrency 2) and Dramatiq (Redis broker, 2 processes,
  1 thread each), each task running the script with `subprocess` and recording its times.
Jobs are submitted as fast as the panel's producer (`submit_job`: sealing, signing, the atomic
write) allows, spread round-robin over 8 identical no-op apps, and counted from the first
submit to the last terminal event. Figures are medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from core.runtime.catalogue import Catalogue
from core.validation import validate_inputs
from panel.jobs.producer import submit_job
from tests.bench.harness import (
    Process,
    World,
    cpu_seconds,
    last_event_ms,
    median,
    open_store,
    row,
    tree_cpu_seconds,
    wait_for_agents,
    wait_for_events,
    world,
)

EVENTS_PER_JOB = 5  # submit, verify, validate, start, succeed
SUBMITTERS = 16
TARGET_FLOOR_RATIO = 0.7
TARGET_PEER_RATIO = 1.3


# --- floors -----------------------------------------------------------------------------------


async def _run_script(script: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(script),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await process.communicate()


async def floor_asyncio(script: Path, count: int, at_once: int = 2) -> float:
    """Scripts/s of a bare asyncio loop starting `script` `at_once` at a time."""
    slots = asyncio.Semaphore(at_once)

    async def one() -> None:
        async with slots:
            await _run_script(script)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return count / (time.perf_counter() - started)


def _run_many(script: str, count: int) -> None:
    for _ in range(count):
        subprocess.run(["bash", script], capture_output=True, stdin=subprocess.DEVNULL, check=False)


def floor_processes(script: Path, count: int, workers: int = 2) -> float:
    """Scripts/s of `workers` plain processes each running its share of `script` starts."""
    with ProcessPoolExecutor(workers) as pool:
        pool.submit(int).result()  # the workers exist before the clock starts
        started = time.perf_counter()
        shares = [count // workers + (i < count % workers) for i in range(workers)]
        for future in [pool.submit(_run_many, str(script), n) for n in shares]:
            future.result()
        return count / (time.perf_counter() - started)


# --- provision --------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured provision run."""

    jobs_per_s: float
    agent_rss_kib: list[tuple[int, int]] = field(default_factory=list)
    # CPU milliseconds per job: the agents' own, their installers', Redis's, the submitter's.
    cpu_ms_per_job: dict[str, float] = field(default_factory=dict)


async def submit_many(built: World, count: int, *, submitters: int = SUBMITTERS) -> float:
    """Submit `count` no-op jobs round-robin over the apps; returns the first submit's time."""
    client, store = await open_store(built)
    catalogue = Catalogue.load(built.installers)
    apps = [catalogue.get(app_id) for app_id in built.app_ids]
    values = {}
    for app in apps:
        assert app is not None and app.manifest is not None
        values[app.app_id] = validate_inputs(app.manifest, {})
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def submitter() -> None:
        while not queue.empty():
            app = apps[queue.get_nowait() % len(apps)]
            assert app is not None
            await submit_job(
                store,
                built.ring,
                app,
                values[app.app_id],
                requested_by="bench",
                target="local",
                ttl_s=3600,
            )

    first = time.time()
    try:
        await asyncio.gather(*(submitter() for _ in range(submitters)))
    finally:
        await client.aclose()
    return first


async def provision_run(
    built: World, count: int, *, agents: int, concurrency: int, watch: Callable[[], None] = print
) -> Run:
    """Jobs/s of `agents` real agent processes on `count` jobs, from first submit to last end."""
    del watch
    processes = [built.start_agent(f"bench-{i}", concurrency=concurrency) for i in range(agents)]
    client = aioredis.from_url(built.url)
    try:
        await wait_for_agents(client, built, agents)
        before = int(await client.xlen(built.keys.events))
        cpu_before = _cpu_of(built, processes)
        first = await submit_many(built, count)
        await wait_for_events(client, built, before + EVENTS_PER_JOB * count)
        cpu = {
            name: 1000 * (after - cpu_before[name]) / count
            for name, after in _cpu_of(built, processes).items()
        }
        last = await last_event_ms(client, built) / 1000
        failed = await _count_failed(client, built)
        if failed:
            raise RuntimeError(f"{failed} jobs failed in the benchmark; see {built.folder}")
        rss = [process.memory_kib() for process in processes]
    finally:
        await client.aclose()
        for process in processes:
            process.stop()
            built.processes.remove(process)
    return Run(count / (last - first), rss, cpu)


def _cpu_of(built: World, agents: list[Process]) -> dict[str, float]:
    """CPU seconds so far: the agents' own, their installers', Redis's, this process's."""
    own = [process.cpu_s() for process in agents]
    return {
        "agent": sum(agent for agent, _children in own),
        "installers": sum(children for _agent, children in own),
        "redis": cpu_seconds(built.server.pid)[0],
        "submitter": time.process_time(),
    }


async def _count_failed(client: aioredis.Redis, built: World) -> int:
    failed = 0
    async for key in client.scan_iter(match=built.keys.job("*"), count=1000):
        if key.count(b":") == 2 and await client.hget(key, "state") == b"failed":
            failed += 1
    return failed


# --- peers ------------------------------------------------------------------------------------


def peer_run(built: World, kind: str, count: int) -> tuple[float, dict[str, float]]:
    """Tasks/s of Celery or Dramatiq running the script, from first send to last end, and
    the CPU milliseconds per task of its workers, their scripts, Redis, and the sender."""
    env = {
        **os.environ,
        "BENCH_REDIS_URL": built.url,
        "BENCH_SCRIPT": str(built.script()),
        "PYTHONPATH": str(Path.cwd()),
    }
    bin_dir = Path(sys.executable).parent
    if kind == "celery":
        argv = [
            str(bin_dir / "celery"),
            "-A",
            "tests.bench.peer_celery",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "warning",
        ]
        module_name, done_key = "tests.bench.peer_celery", "bench:celery:done"
    else:
        argv = [str(bin_dir / "dramatiq"), "tests.bench.peer_dramatiq", "-p", "2", "-t", "1"]
        module_name, done_key = "tests.bench.peer_dramatiq", "bench:dramatiq:done"
    os.environ.update(BENCH_REDIS_URL=built.url, BENCH_SCRIPT=str(built.script()))
    # Reloaded each time: the module binds its broker to this round's Redis when it runs.
    module = importlib.reload(importlib.import_module(module_name))
    worker = Process.start(argv, env, built.folder / f"{kind}.log")
    built.processes.append(worker)
    import redis

    client = redis.Redis.from_url(built.url)
    try:
        send: Callable[[], object] = module.noop.delay if kind == "celery" else module.noop.send
        send()  # warm-up: the workers are up and have connected before the clock starts
        _wait_list(client, done_key, 1, built.folder / f"{kind}.log")
        client.delete(done_key)
        cpu_before = _peer_cpu(built, worker)
        first = time.time()
        for _ in range(count):
            send()
        _wait_list(client, done_key, count, built.folder / f"{kind}.log")
        cpu = {
            name: 1000 * (after - cpu_before[name]) / count
            for name, after in _peer_cpu(built, worker).items()
        }
        last = max(float(item.split()[1]) for item in client.lrange(done_key, 0, -1))
    finally:
        client.close()
        worker.stop()
        built.processes.remove(worker)
    return count / (last - first), cpu


def _peer_cpu(built: World, worker: Process) -> dict[str, float]:
    """CPU seconds so far of a peer's worker pool, its scripts, Redis and this process."""
    workers, scripts = tree_cpu_seconds(worker.pid)
    return {
        "agent": workers,  # the peer's workers: what our agents are to us
        "installers": scripts,
        "redis": cpu_seconds(built.server.pid)[0],
        "submitter": time.process_time(),
    }


def _wait_list(client: object, key: str, count: int, log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while client.llen(key) < count:  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise RuntimeError(f"peer did not finish; see {log}")
        time.sleep(0.02)


# --- the benchmark ----------------------------------------------------------------------------

CONFIGS = {
    "provision, 1 agent x 2": (1, 2),
    "provision, 2 agents x 1": (2, 1),
    "provision, 2 agents x 2": (2, 2),
}


def one_round(count: int, peers: bool) -> dict[str, float]:
    """Every measurement once; returns name -> jobs (or scripts) per second."""
    figures: dict[str, float] = {}
    with world(prefix="floor") as built:
        figures["floor asyncio (2 at a time)"] = asyncio.run(floor_asyncio(built.script(), count))
        figures["floor 2 processes"] = floor_processes(built.script(), count)
    for name, (agents, concurrency) in CONFIGS.items():
        with world(prefix="tput") as built:
            run = asyncio.run(provision_run(built, count, agents=agents, concurrency=concurrency))
            figures[name] = run.jobs_per_s
            for part, ms in run.cpu_ms_per_job.items():
                figures[f"cpu {name}: {part} ms/job"] = ms
            for index, (rss, hwm) in enumerate(run.agent_rss_kib):
                figures[f"rss {name} #{index} MiB"] = rss / 1024
                figures[f"peak {name} #{index} MiB"] = hwm / 1024
    if peers:
        for kind in ("celery", "dramatiq"):
            with world(prefix=kind) as built:
                figures[kind], cpu = peer_run(built, kind, count)
                for part, ms in cpu.items():
                    figures[f"cpu {kind}: {part} ms/job"] = ms
    return figures


def report(rounds: list[dict[str, float]], count: int) -> dict[str, float]:
    """Print medians with floors and ratios; returns the medians."""
    med = {name: median([r[name] for r in rounds if name in r]) for name in rounds[0]}
    floor_1 = med["floor asyncio (2 at a time)"]
    floor_2 = med["floor 2 processes"]
    print(f"Benchmark 1: throughput, {count} no-op jobs, medians of {len(rounds)} round(s)")
    print(row("floor asyncio (2 at a time)", floor_1, "runs/s"))
    print(row("floor 2 processes", floor_2, "runs/s"))
    one = med["provision, 1 agent x 2"]
    print(row("provision, 1 agent x 2", one, "jobs/s", floor_1, _verdict(one / floor_1)))
    for name in ("provision, 2 agents x 1", "provision, 2 agents x 2"):
        print(row(name, med[name], "jobs/s", floor_2, _verdict(med[name] / floor_2)))
    if "celery" in med:
        best_peer = max(med["celery"], med["dramatiq"])
        for kind in ("celery", "dramatiq"):
            print(row(kind, med[kind], "jobs/s", floor_2))
        best_ours = max(med["provision, 2 agents x 1"], med["provision, 2 agents x 2"])
        ratio = best_ours / best_peer
        target = "met" if ratio >= TARGET_PEER_RATIO else "NOT met"
        print(f"  provision (2 agents) / faster peer: {ratio:.2f} (target >= 1.3: {target})")
    for name, value in med.items():
        if name.startswith(("rss", "peak")):
            print(f"  {name:<44} {value:>10.1f}")
    _report_cpu(med)
    return med


def _report_cpu(med: dict[str, float]) -> None:
    """CPU per job, and the ceiling it sets: two cores' worth of it, whatever the latency."""
    cores = os.cpu_count() or 1
    for name in [*CONFIGS, "celery", "dramatiq"]:
        parts = {
            key.rpartition(": ")[2].removesuffix(" ms/job"): value
            for key, value in med.items()
            if key.startswith(f"cpu {name}: ")
        }
        if not parts:
            continue
        total = sum(parts.values())
        if name in ("celery", "dramatiq"):
            peer_words = {"agent": "workers", "installers": "scripts", "submitter": "sender"}
            parts = {peer_words.get(part, part): ms for part, ms in parts.items()}
        shown = ", ".join(f"{part} {ms:.2f}" for part, ms in parts.items())
        print(
            f"  cpu per job, {name}: {shown} = {total:.2f} ms;"
            f" {cores} cores allow at most {1000 * cores / total:.0f} jobs/s"
        )


def _verdict(ratio: float) -> str:
    return "target >= 0.70: " + ("met" if ratio >= TARGET_FLOOR_RATIO else "NOT met")


def main() -> None:
    """One command: `python -m tests.bench.throughput`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-peers", action="store_true")
    args = parser.parse_args()
    rounds = []
    for index in range(args.rounds):
        rounds.append(one_round(args.jobs, not args.no_peers))
        rates = {k: v for k, v in rounds[-1].items() if not k.startswith(("cpu", "rss", "peak"))}
        print(f"  round {index + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()))
    report(rounds, args.jobs)


if __name__ == "__main__":
    main()
