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
from typing import Any

import redis.asyncio as aioredis
from ulid import ULID

from core.keyring import KeyRing
from core.keys import RedisKeys
from statemachine.events import new_event
from statemachine.snapshot import apply_event
from tests.bench import latency
from tests.bench.harness import World, median, world
from tests.bench.memory import drain_queue
from tests.bench.throughput import provision_run

_RUN = (
    ("submit", "", "queued", 0),
    ("verify", "queued", "verified", 0),
    ("validate", "verified", "validated", 0),
    ("start", "validated", "running", 1),
    ("succeed", "running", "succeeded", 1),
)
BATCH_JOBS = 1000
TARGET_RATIO = 0.9


def _details(app_id: str, entry_id: str) -> dict[str, dict[str, Any]]:
    return {
        "submit": {
            "app_id": app_id,
            "app_version": "1.0.0",
            "app_fingerprint": "sha256:" + "0" * 64,
            "target": "local",
            "requested_by": "bench",
            "inputs": {},
            "secret_fingerprints": {},
            "expires_at": 0,
        },
        "verify": {"entry_id": entry_id, "kid": "k"},
        "validate": {},
        "start": {"entry_id": entry_id, "script": "install.sh"},
        "succeed": {"exit_code": 0, "duration_s": 0.003},
    }


def _queue_job(pipe: Any, keys: RedisKeys, ring: KeyRing, app_id: str, at_ms: int) -> None:
    job_id = str(ULID())
    entry_id = f"{at_ms}-0"
    details = _details(app_id, entry_id)
    snapshot: dict[str, str] = {"cancel_requested": "0", "entry_id": entry_id}
    prev = ""
    for step, (trigger, src, dst, attempt) in enumerate(_RUN):
        event = new_event(
            ring,
            job_id=job_id,
            trigger=trigger,
            src=src,
            dst=dst,
            at=at_ms + step,
            actor="agent:history" if step else "panel:bench",
            attempt=attempt,
            detail=details[trigger],
            prev=prev,
        )
        prev = event.hash
        fields = event.stream_fields()
        pipe.xadd(keys.job_events(job_id), fields)
        pipe.xadd(keys.events, fields)
        snapshot.update(apply_event(snapshot, event))
    pipe.hset(keys.job(job_id), mapping=snapshot)
    pipe.zadd(keys.jobs_index, {job_id: at_ms})


async def fill_history(built: World, jobs: int) -> float:
    """Write `jobs` finished jobs (5 events each) as fast as pipelining allows; seconds taken."""
    client = aioredis.from_url(built.url)
    keys, ring = built.keys, built.ring
    started = time.perf_counter()
    base_ms = int(time.time() * 1000) - jobs * 10
    try:
        for first in range(0, jobs, BATCH_JOBS):
            pipe = client.pipeline(transaction=False)
            for number in range(first, min(first + BATCH_JOBS, jobs)):
                app_id = built.app_ids[number % len(built.app_ids)]
                _queue_job(pipe, keys, ring, app_id, base_ms + number * 10)
            await pipe.execute()
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
