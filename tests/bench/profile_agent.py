"""Where a real `provision agent` spends its time on a stream of no-op jobs (py-spy).

    .venv/bin/python -m tests.bench.profile_agent [--jobs 1000] [--top 40]

Runs benchmark 1's one-agent case with py-spy sampling the agent and prints the functions
with the most samples, inclusive and self, so an optimisation starts from a measurement.
(The panel is profiled by `python -m tests.bench.panel_load --profile post|form`.)
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.bench.harness import world
from tests.bench.throughput import provision_run

PY_SPY = Path(sys.executable).parent / "py-spy"


def summarise(raw: Path, top: int) -> None:
    """Print the hottest frames of a py-spy `raw` (collapsed stacks) file."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue  # a blank line, or a frame name py-spy broke across lines
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    print(f"{total} samples")
    print("inclusive:")
    for frame, count in inclusive.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {frame}")
    print("self:")
    for frame, count in own.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {frame}")


async def _profile(jobs: int, raw: Path) -> None:
    with world(prefix="profile") as built:
        original = built.start_agent

        def start_agent(agent_id: str, **kwargs: object) -> object:
            process = original(agent_id, **kwargs)  # type: ignore[arg-type]
            spy = [str(PY_SPY), "record", "--pid", str(process.pid), "--format", "raw"]
            spy += ["--output", str(raw), "--rate", "250", "--nonblocking"]
            built.spy = subprocess.Popen(  # type: ignore[attr-defined]
                spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            return process

        built.start_agent = start_agent  # type: ignore[method-assign]
        run = await provision_run(built, jobs, agents=1, concurrency=2)
        built.spy.wait(timeout=30)  # type: ignore[attr-defined]
        print(f"{run.jobs_per_s:.1f} jobs/s while sampled")


def main() -> None:
    """One command: `python -m tests.bench.profile_agent`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    raw = Path("/tmp") / "provision-agent-profile.txt"
    asyncio.run(_profile(args.jobs, raw))
    summarise(raw, args.top)


if __name__ == "__main__":
    main()
