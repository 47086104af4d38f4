"""What every benchmark needs: a private Redis, no-op apps, key ring, real agent/panel processes.

Nothing here is timed: it builds the world a benchmark measures, and reads the figures
(events in Redis, /proc of a process) that the benchmarks report.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from core.keyring import KeyRing
from core.keys import RedisKeys
from core.runtime.redis_conn import connect
from core.runtime.redis_launcher import RedisServer, start_redis
from statemachine.store import EventStore
from tests.agent_support import make_ring, provision_argv, wait_until, write_app

NOOP_SCRIPT = 'echo "noop"\nexit 0'
TERMINAL = (b"succeeded", b"failed")
# The panel's per-user submission limit is a guard against people, not against a benchmark.
UNLIMITED_SUBMISSIONS = "100000"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class World:
    """One benchmark run's Redis, namespace, installers and keys."""

    folder: Path
    server: RedisServer
    namespace: str
    installers: Path
    keys_file: Path
    ring: KeyRing
    app_ids: list[str]
    processes: list[Process] = field(default_factory=list)
    token: str | None = None

    @property
    def url(self) -> str:
        """URL of the private Redis."""
        return self.server.url

    @property
    def keys(self) -> RedisKeys:
        """Key names of this run."""
        return RedisKeys(self.namespace)

    def script(self, app_id: str | None = None) -> Path:
        """The no-op install script (all apps run the same one)."""
        return self.installers / (app_id or self.app_ids[0]) / "install.sh"

    def environ(self, **extra: str) -> dict[str, str]:
        """`PROV_*` settings shared by every provision process of this run."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.folder),
            "PROV_REDIS_URL": self.url,
            "PROV_NAMESPACE": self.namespace,
            "PROV_HMAC_KEYS_FILE": str(self.keys_file),
            "PROV_INSTALLERS_DIR": str(self.installers),
            "PROV_DATA_DIR": str(self.folder / "data"),
            "PROV_LOG_FORMAT": "json",
        }
        env.update(extra)
        return env

    def start_agent(self, agent_id: str, *, concurrency: int = 2, **extra: str) -> Process:
        """A real `provision agent` process, logging to a file."""
        env = self.environ(
            PROV_AGENT_ID=agent_id,
            PROV_AGENT_CONCURRENCY=str(concurrency),
            PROV_KILL_GRACE_S="1",
            PROV_SHUTDOWN_GRACE_S="10",
            **extra,
        )
        process = Process.start(provision_argv("agent"), env, self.folder / f"{agent_id}.log")
        self.processes.append(process)
        return process

    def start_panel(self, port: int, **extra: str) -> Process:
        """A real `provision panel` process on `port`."""
        env = self.environ(
            PROV_PANEL_PORT=str(port),
            PROV_SUBMISSIONS_PER_MINUTE=UNLIMITED_SUBMISSIONS,
            PROV_MAX_UNFINISHED_PER_USER=UNLIMITED_SUBMISSIONS,
            **extra,
        )
        process = Process.start(provision_argv("panel"), env, self.folder / f"panel-{port}.log")
        self.processes.append(process)
        return process

    def admin_token(self) -> str:
        """An admin user and API token made with the real `provision users`/`tokens` commands."""
        if self.token is not None:
            return self.token
        env = self.environ()
        subprocess.run(
            provision_argv("users", "add", "bench", "--role", "admin"),
            env=env,
            input=b"bench password that is long enough\n",
            check=True,
            capture_output=True,
        )
        made = subprocess.run(
            provision_argv("tokens", "create", "bench"), env=env, check=True, capture_output=True
        )
        self.token = made.stdout.decode().strip().splitlines()[-1]
        return self.token

    def stop_processes(self) -> None:
        """SIGTERM every started process, then SIGKILL what is left."""
        for process in self.processes:
            process.stop()
        self.processes.clear()


class Process:
    """A child process with its output in a log file."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.popen = popen
        self.log_path = log_path

    @classmethod
    def start(cls, argv: Sequence[str], env: dict[str, str], log_path: Path) -> Process:
        """Start `argv` with `env`, stdout and stderr to `log_path`."""
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(argv), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        return cls(popen, log_path)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, wait, SIGKILL."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)

    def cpu_s(self) -> tuple[float, float]:
        """(own, its reaped children's) CPU seconds, user + system, so far."""
        return cpu_seconds(self.pid)

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in KiB from /proc/<pid>/status."""
        values = {"VmRSS": 0, "VmHWM": 0}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in values:
                    values[name] = int(rest.split()[0])
        return values["VmRSS"], values["VmHWM"]


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of process `pid` from /proc/<pid>/stat."""
    # Fields after the command name's closing parenthesis: utime stime cutime cstime are
    # the 12th to 15th of them (proc(5) numbers them 14 to 17, counting pid and comm).
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(value) for value in after_name[11:15])
    return (utime + stime) / ticks, (cutime + cstime) / ticks


def tree_cpu_seconds(root_pid: int) -> tuple[float, float]:
    """`cpu_seconds` summed over `root_pid` and its living descendants (a worker pool).

    A living process's CPU is in no parent's children figure yet, and a reaped one's is in
    its parent's only, so the sum counts each process once.
    """
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                after_name = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(after_name[1])
    tree, grew = {root_pid}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    own = children = 0.0
    for pid in tree:
        with contextlib.suppress(OSError):
            pid_own, pid_children = cpu_seconds(pid)
            own, children = own + pid_own, children + pid_children
    return own, children


@contextlib.contextmanager
def world(n_apps: int = 8, *, prefix: str = "bench") -> Iterator[World]:
    """A fresh Redis (from the launcher `provision up` uses), no-op apps and a key ring."""
    with tempfile.TemporaryDirectory(prefix=f"prov-{prefix}-") as raw:
        folder = Path(raw)
        server = start_redis(folder / "redis")
        installers = folder / "installers"
        app_ids = [f"noop{i}" for i in range(n_apps)]
        for app_id in app_ids:
            write_app(installers, app_id, NOOP_SCRIPT)
        keys_file = folder / "hmac.keys"
        ring = make_ring(keys_file)
        built = World(folder, server, "prov", installers, keys_file, ring, app_ids)
        try:
            yield built
        finally:
            built.stop_processes()
            server.stop()


async def open_store(built: World) -> tuple[aioredis.Redis, EventStore]:
    """A client and event store on the run's Redis, as the panel builds them."""
    client = await connect(built.url)
    return client, EventStore(client, built.keys, built.ring)


async def wait_for_agents(client: aioredis.Redis, built: World, count: int) -> None:
    """Until `count` agents beat in `prov:agents` (they have connected and are reading)."""

    async def beating() -> bool:
        return int(await client.hlen(built.keys.agents)) >= count

    await wait_until(beating, timeout_s=60, interval_s=0.05, message=f"{count} agents")


async def wait_for_panel(url: str) -> None:
    """Until the panel answers /readyz."""

    async def ready() -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(f"{url}/readyz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await wait_until(ready, timeout_s=60, interval_s=0.1, message="panel ready")


async def wait_for_events(
    client: aioredis.Redis, built: World, total: int, *, timeout_s: float = 600
) -> None:
    """Until the global event stream holds `total` events (cheap: one XLEN per poll)."""

    async def enough() -> bool:
        return int(await client.xlen(built.keys.events)) >= total

    await wait_until(enough, timeout_s=timeout_s, interval_s=0.02, message=f"{total} events")


async def last_event_ms(client: aioredis.Redis, built: World) -> int:
    """The `at` of the newest event in the global stream."""
    newest = await client.xrevrange(built.keys.events, count=1)
    return int(newest[0][1][b"at"])


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (`fraction` in 0..1)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    """The median."""
    return statistics.median(values)


def row(name: str, value: float, unit: str, floor: float | None = None, note: str = "") -> str:
    """One printed line: figure, floor and ratio."""
    text = f"  {name:<44} {value:>10.1f} {unit:<8}"
    if floor:
        text += f" floor {floor:>9.1f}  ratio {value / floor:6.2f}"
    return text + (f"  {note}" if note else "")


def run(coro: object) -> None:
    """Run a benchmark's main coroutine."""
    asyncio.run(coro)  # type: ignore[arg-type]


def now() -> float:
    """Monotonic seconds."""
    return time.perf_counter()
