"""The peer actor for Dramatiq (benchmark 1): run the no-op script, record start and end.

Started as `dramatiq tests.bench.peer_dramatiq -p 2 -t 1` with BENCH_REDIS_URL (unix://...)
and BENCH_SCRIPT in the environment.
"""

from __future__ import annotations

import os
import subprocess
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

_URL = os.environ["BENCH_REDIS_URL"]
_SCRIPT = os.environ["BENCH_SCRIPT"]
DONE_KEY = "bench:dramatiq:done"

dramatiq.set_broker(RedisBroker(url=_URL))
_client = redis.Redis.from_url(_URL)


@dramatiq.actor(actor_name="bench_noop", max_retries=0)
def noop() -> None:
    """Run the script as an installer would be run, and record when."""
    started = time.time()
    subprocess.run(["bash", _SCRIPT], capture_output=True, stdin=subprocess.DEVNULL, check=False)
    _client.rpush(DONE_KEY, f"{started} {time.time()}")
