"""Benchmark 5: do throughput and latency hold with a long history, and with a long queue?

    .venv/bin/python -m tests.bench.scale [--history-jobs 200000] [--rounds 2]

On one private Redis, benchmark 1's one-agent case (2,000 jobs) and benchmark 2's latency (200
lone jobs) are measured on the empty store, then again after writing `--history-jobs`
finished jobs of five well-formed events each (chained and MACed with `new_event` and
`apply_event`, the way the store builds them, written with pipelined XADD/HSET/ZADD), so the
default is 1,000,000 events in `prov:events` and 200,000 finished jobs, which covers "a
million events and 100,000 finished jobs". The figures with history are printed as ratios of
those without (target: at most 10% worse). Then the agent drains 10,000 jobs queued before it
starts (its jobs/s against the empty-store throughput of the same run).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import redis.asyncio as aioredis

from tests.bench import latency
from tests.bench.harness import World, median, world
from tests.bench.history import write_history
from tests.bench.memory import drain_queue
from tests.bench.throughput import provision_run

BATCH_JOBS = 1000
TARGET_RATIO = 0.9


async def fill_history(built: World, jobs: int) -> float:
    """Write `jobs` finished jobs (5 events each) as fast as pipelining allows; seconds taken."""
    client = aioredis.from_url(built.url)
    keys, ring = built.keys, built.ring
    started = time.perf_counter()
    base_ms = int(time.time() * 1000) - jobs * 10
    try:
        await write_history(
            client,
            keys,
            ring,
            jobs=jobs,
            start_ms=base_ms,
            app_ids=built.app_ids,
            spacing_ms=10,
            batch_jobs=BATCH_JOBS,
        )
        elapsed = time.perf_counter() - started
        # The bulk load makes Redis rewrite its append-only file (a fork that competes for
        # the two cores): measure the steady state after it, not the rewrite.
        while True:
            persistence = await client.info("persistence")
            if not (persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]):
                break
            await asyncio.sleep(0.5)
    finally:
        await client.aclose()
    return elapsed


async def figures_on(built: World, jobs: int, lone: int) -> dict[str, float]:
    """Throughput (1 agent x 2) and latency p50/p99 on the store as it stands."""
    run = await provision_run(built, jobs, agents=1, concurrency=2)
    result = await latency.measure(built, lone)
    summary = latency.summary(result)
    return {
        "throughput jobs/s": run.jobs_per_s,
        "submit -> running p50 ms": summary["submit -> running p50"],
        "submit -> running p99 ms": summary["submit -> running p99"],
        "submit -> succeeded p50 ms": summary["submit -> succeeded p50"],
        "API answer p50 ms": summary["API answer p50"],
    }


async def measure(history_jobs: int, jobs: int, lone: int, rounds: int, queued: int) -> None:
    """Empty, then with history, `rounds` times each; then the long queue. Prints as it goes."""
    with world(prefix="scale") as built:
        empty = [await figures_on(built, jobs, lone) for _ in range(rounds)]
        seconds = await fill_history(built, history_jobs)
        client = aioredis.from_url(built.url)
        events = int(await client.xlen(built.keys.events))
        finished = int(await client.zcard(built.keys.jobs_index))
        used = (await client.info("memory"))["used_memory_human"]
        await client.aclose()
        print(
            f"  history written: {history_jobs} jobs in {seconds:.1f} s; prov:events holds "
            f"{events} events, the index {finished} jobs, Redis uses {used}"
        )
        full = [await figures_on(built, jobs, lone) for _ in range(rounds)]
        drained, memory = await drain_queue(built, queued)
    print(f"Benchmark 5: scale, medians of {rounds} round(s) each")
    for name in empty[0]:
        before = median([r[name] for r in empty])
        after = median([r[name] for r in full])
        # Higher is better for throughput, lower for times: the ratio is "how much worse".
        worse = before / after if name.startswith("throughput") else after / before
        verdict = "met" if worse <= 1 / TARGET_RATIO else "NOT met"
        print(
            f"  {name:<28} empty {before:8.2f}   with history {after:8.2f}   "
            f"worse by x{worse:4.2f} (target <= x{1 / TARGET_RATIO:.2f}: {verdict})"
        )
    base = median([r["throughput jobs/s"] for r in empty])
    print(
        f"  agent draining {queued} queued jobs: {drained:.1f} jobs/s, x{drained / base:.2f} of "
        f"the empty-store throughput; agent VmRSS max {memory.max_rss / 1024:.1f} MiB"
    )


def main() -> None:
    """One command: `python -m tests.bench.scale`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history-jobs", type=int, default=200_000)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--lone", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--queued", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(measure(args.history_jobs, args.jobs, args.lone, args.rounds, args.queued))


if __name__ == "__main__":
    main()
