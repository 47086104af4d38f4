"""Run benchmarks by name: `python -m tests.bench all` or `python -m tests.bench latency ...`.

Each benchmark is also its own command (`python -m tests.bench.<name>`, with --help); this
runner starts them one after the other with their defaults, each in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = {
    "redis_cost": "4: Redis round trips, commands and bytes per job",
    "latency": "2: lone-job latency and API answer time",
    "throughput": "1: jobs/s against asyncio and process floors, Celery, Dramatiq",
    "panel_load": "3: panel requests/s against a constant handler",
    "memory": "6: agent and panel memory, idle, under load, 10,000 queued",
    "scale": "5: figures with a million events of history, and a long queue",
}


def main() -> None:
    """`all`, or one benchmark's name followed by its own options."""
    if len(sys.argv) < 2 or sys.argv[1] not in {"all", *BENCHMARKS}:
        print("usage: python -m tests.bench all | <name> [options]")
        for name, what in BENCHMARKS.items():
            print(f"  {name:<12} benchmark {what}")
        sys.exit(2)
    names = list(BENCHMARKS) if sys.argv[1] == "all" else [sys.argv[1]]
    options = sys.argv[2:]
    failed = []
    for name in names:
        print(f"=== {name}", flush=True)
        done = subprocess.run([sys.executable, "-m", f"tests.bench.{name}", *options], check=False)
        if done.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
