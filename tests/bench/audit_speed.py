"""Audit speed: replay and verify of a long history, next to a raw read of the same stream.

    .venv/bin/python -m tests.bench.audit_speed [--jobs 200000] [--rounds 3]

On a private Redis from the launcher, writes `--jobs` finished jobs of five well-formed events
each (`tests.bench.history`: chained and MACed the way the store builds them), so the default
is 1,000,000 events. Then, `--rounds` times each:
- floor: read every entry of `prov:events` in the same batches, checking nothing;
- replay: `audit_all(check_streams=False)`, what `provision audit replay` runs: every event
  parsed, hashed, MAC-checked and walked through the machine, every snapshot compared;
- verify: `audit_all(check_streams=True)`, what `provision audit verify` runs: the same plus
  every job's own stream compared with its global entries.
Each in one process, and split over one process per core (`statemachine.audit.parallel`, what
the CLI does from 100,000 events on: verify by spans of the stream, each read once; replay by
shares of the jobs, each process reading all of it). Finally one real `provision audit verify`
process, start to exit. Events/s are medians; the target is at least 50,000 events/s for
replay and verify. The machine is shared: run it when nothing else is (`uptime`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from statemachine.audit.auditor import audit_all, raw_entries
from statemachine.audit.parallel import audit_in_parallel
from tests.bench.harness import World, median, open_store, row, world
from tests.bench.history import write_history

TARGET_EVENTS_PER_S = 50_000


async def measure(jobs: int, rounds: int) -> None:
    """Write the history, then time the floor, replay and verify `rounds` times each."""
    with world(prefix="audit") as built:
        client, store = await open_store(built)
        started = time.perf_counter()
        events = await write_history(client, built.keys, built.ring, jobs=jobs, start_ms=1)
        print(
            f"audit speed: {events:,} events of {jobs:,} jobs written in "
            f"{time.perf_counter() - started:.1f} s"
        )
        floors: list[float] = []
        figures: dict[str, list[float]] = {name: [] for name in _RUNS}
        workers = max(2, min(4, os.cpu_count() or 2))
        for _round in range(rounds):
            started = time.perf_counter()
            read = 0
            async for _entry in raw_entries(client, built.keys.events):
                read += 1
            floors.append(read / (time.perf_counter() - started))
            for name, (check_streams, parallel) in _RUNS.items():
                started = time.perf_counter()
                if parallel:
                    summary = await asyncio.to_thread(
                        audit_in_parallel,
                        built.url,
                        built.keys.namespace,
                        built.ring,
                        workers=workers,
                        check_streams=check_streams,
                        # As the CLI runs them: replay prints every job's row as it comes.
                        on_row=None if check_streams else _drop_row,
                    )
                else:
                    summary = await audit_all(store, built.ring, check_streams=check_streams)
                figures[name].append(summary.events / (time.perf_counter() - started))
                if summary.failing or summary.events != events:
                    raise SystemExit(f"the history did not verify: {summary.failing[:3]}")
        await client.aclose()
        floor = median(floors)
        print(row("raw read of prov:events (floor)", floor, "ev/s"))
        for name, values in figures.items():
            label = name.replace("N processes", f"{workers} processes")
            print(row(label, median(values), "ev/s", floor, _verdict(median(values))))
        print(row("verify, one real process", _cli_verify(built), "ev/s", floor, "start to exit"))


# name -> (compare the per-job streams too, split over processes)
_RUNS = {
    "replay, 1 process": (False, False),
    "verify, 1 process": (True, False),
    "replay, N processes": (False, True),
    "verify, N processes": (True, True),
}


def _drop_row(_row: dict[str, Any]) -> None:
    """Rows of a replay, received as the CLI receives them and not printed."""


def _cli_verify(built: World) -> float:
    env = {
        **os.environ,
        "PROV_REDIS_URL": built.url,
        "PROV_NAMESPACE": built.keys.namespace,
        "PROV_HMAC_KEYS_FILE": str(built.keys_file),
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "core", "audit", "verify", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"provision audit verify failed: {done.stdout[-500:]} {done.stderr[-500:]}"
        )
    return int(json.loads(done.stdout)["events"]) / elapsed


def _verdict(events_per_s: float) -> str:
    met = "met" if events_per_s >= TARGET_EVENTS_PER_S else "NOT met"
    return f"target {TARGET_EVENTS_PER_S:,} ev/s {met}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200_000, help="finished jobs of 5 events")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(measure(args.jobs, args.rounds))


if __name__ == "__main__":
    main()
