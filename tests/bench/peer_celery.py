"""The peer task for Celery (benchmark 1): run the no-op script, record start and end.

Started as `celery -A tests.bench.peer_celery worker -P prefork -c 2` with BENCH_REDIS_URL
(unix://...) and BENCH_SCRIPT in the environment.
"""

from __future__ import annotations

import os
import subprocess
import time

import redis
from celery import Celery

_URL = os.environ["BENCH_REDIS_URL"]
_SCRIPT = os.environ["BENCH_SCRIPT"]
DONE_KEY = "bench:celery:done"

app = Celery("bench", broker=_URL.replace("unix://", "redis+socket://", 1))
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)
_client = redis.Redis.from_url(_URL)


@app.task(name="bench.noop")
def noop() -> None:
    """Run the script as an installer would be run, and record when."""
    started = time.time()
    subprocess.run(["bash", _SCRIPT], capture_output=True, stdin=subprocess.DEVNULL, check=False)
    _client.rpush(DONE_KEY, f"{started} {time.time()}")
