"""The sandboxed runner: start an installer, stream its output, and always clean up after it.

docs/architecture.md §6, layers 5 and 6. The script runs in its own session and process group, with
stdin
from /dev/null, in `cwd`, with exactly the environment the caller built. Its output is read in
chunks and handed over line by line to `on_line`, which is awaited, so a script that floods
its output waits for the log writer instead of filling the agent's memory.

How a run ends:

    the script exits by itself   outcome from its exit status; nothing is killed, so a service
                                 it started keeps running; output still arriving (a daemon
                                 holding the pipe) is read for `drain_after_exit_s`, then the
                                 pipes are dropped
    timeout, cancel event,       SIGTERM to the process group, up to `kill_grace_s` for the
    error in on_line, or the     leader to exit, SIGKILL to the group, then a sweep that kills
    caller cancelled us          every process whose environment carries PROV_JOB_ID=<job_id>
                                 (children that left the group with setsid)

The killing happens in `finally`, so every way out of the run goes through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from structlog.typing import FilteringBoundLogger

from core.retry import Cancelled, Exited, Signalled, TimedOut

JOB_ID_VARIABLE = "PROV_JOB_ID"
TRUNCATION_SUFFIX = " [line truncated]"

# Large reads keep the per-byte cost low when a script floods its output; the StreamReader
# holds at most about twice its limit before it stops reading the pipe.
_CHUNK_BYTES = 64 * 1024
_STREAM_LIMIT = 64 * 1024  # asyncio's own default for create_subprocess_exec
# How often a kill path checks whether the child has been reaped (the normal exit is not
# polled: see _ExitSignallingProtocol).
_EXIT_POLL_S = 0.02
# A SIGKILLed process is gone within milliseconds; one that is not after this long is stuck
# in the kernel (uninterruptible I/O) and waiting longer would not help.
_REAP_TIMEOUT_S = 5.0
# The sweep repeats until no process of the job is left, because a process it has not killed
# yet can still fork; bounded so a fork bomb cannot hold the agent.
_SWEEP_TIMEOUT_S = 3.0
_SWEEP_PAUSE_S = 0.05

log: FilteringBoundLogger = structlog.get_logger()

Outcome = Exited | Signalled | TimedOut | Cancelled


def reap_children_by_pidfd() -> bool:
    """On Python 3.11, reap installers through pidfds on this loop, not one thread each.

    Call once from the entry point, inside its running loop. asyncio 3.11 defaults to the
    ThreadedChildWatcher: a thread started and joined for every child, a tenth of the agent's
    time on a stream of short jobs. Python 3.12 and later pick pidfds by themselves (and
    deprecate child watchers), as does a kernel without pidfd_open here: False then.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)
    return True


class _ExitSignallingProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """The protocol of `create_subprocess_exec`, which also says the moment the child is reaped.

    Process.wait() cannot tell: it also waits for the pipes to close, so a daemon holding
    stdout would make it wait forever (CPython gh-119710). Polling returncode instead cost a
    no-op job half a poll interval on average (it was 20 ms, several times the script's own
    run time); asyncio calls `process_exited` right after it reaped the child.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        # A future rather than an Event: waited on directly, it costs no task per run.
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


async def _start(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]
) -> tuple[asyncio.subprocess.Process, asyncio.Future[None]]:
    """`create_subprocess_exec` in a new session, with a future done when the child is reaped."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        lambda: _ExitSignallingProtocol(_STREAM_LIMIT, loop),
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,
    )
    return asyncio.subprocess.Process(transport, protocol, loop), protocol.exited


OnLine = Callable[[str, str], Awaitable[None]]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended, how long it took, and which escaped processes the sweep killed."""

    outcome: Outcome
    duration_s: float
    swept_pids: tuple[int, ...]


async def run_installer(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    job_id: str,
    timeout_s: float,
    kill_grace_s: float,
    on_line: OnLine,
    cancel: asyncio.Event | None = None,
    drain_after_exit_s: float = 1.0,
    max_line_bytes: int = 8192,
) -> RunResult:
    """Run `argv` sandboxed, stream its output to `on_line`, and kill what it leaves on failure.

    `env` is passed as it is and must carry PROV_JOB_ID=`job_id`: the sweep finds the job's
    processes by that entry. Raises what `on_line` raises, and CancelledError when cancelled,
    in both cases after the cleanup.
    """
    if not job_id or env.get(JOB_ID_VARIABLE) != job_id:
        raise ValueError(f"env must set {JOB_ID_VARIABLE} to the job id, so the sweep finds it")
    if max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be at least 1, got {max_line_bytes}")
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        proc, exited = await _start(argv, cwd=cwd, env=env)
    except asyncio.CancelledError:
        # Cancelled while the child was being set up: asyncio killed the child itself, but
        # it may already have forked; the sweep does not need its pid.
        await _uncancellable(_sweep(job_id, pgid=None))
        raise
    pgid = proc.pid  # start_new_session: the child leads a new session and process group
    log.info("sandbox.started", pid=proc.pid, script=argv[0] if argv else "")
    assert proc.stdout is not None
    assert proc.stderr is not None
    pumps = [
        asyncio.create_task(_pump(proc.stdout, "stdout", on_line, max_line_bytes)),
        asyncio.create_task(_pump(proc.stderr, "stderr", on_line, max_line_bytes)),
    ]
    killed_for: TimedOut | Cancelled | None = None
    exited_by_itself = False
    swept: tuple[int, ...] = ()
    try:
        killed_for = await _wait_for_end(proc, exited, pumps, started + timeout_s, cancel)
        if killed_for is None:
            exited_by_itself = True
            await _drain(pumps, drain_after_exit_s)
        else:
            log.warning("sandbox.stopping", why=type(killed_for).__name__, pid=proc.pid)
    finally:
        swept = await _uncancellable(
            _clean_up(
                proc,
                pgid,
                pumps,
                job_id=job_id,
                kill=not exited_by_itself,
                kill_grace_s=kill_grace_s,
                drain_s=drain_after_exit_s,
            )
        )
    duration_s = loop.time() - started
    outcome = _outcome(proc.returncode, killed_for)
    # The job's own `job.finished` line says how a plain run ended; this one is for what
    # only the sandbox knows, so it is worth an info line only when something was killed.
    (log.info if killed_for is not None or swept else log.debug)(
        "sandbox.finished",
        outcome=type(outcome).__name__,
        returncode=proc.returncode,
        duration_s=round(duration_s, 3),
        swept_pids=list(swept),
    )
    return RunResult(outcome=outcome, duration_s=duration_s, swept_pids=swept)


def _outcome(returncode: int | None, killed_for: TimedOut | Cancelled | None) -> Outcome:
    """The outcome of a run: ours when we killed it, otherwise what its exit status says."""
    if killed_for is not None:
        return killed_for
    assert returncode is not None  # an exit by itself was observed through returncode
    if returncode < 0:
        return Signalled(-returncode)
    return Exited(returncode)


async def _wait_for_end(
    proc: asyncio.subprocess.Process,
    exited: asyncio.Future[None],
    pumps: list[asyncio.Task[None]],
    deadline: float,
    cancel: asyncio.Event | None,
) -> TimedOut | Cancelled | None:
    """Wait for the exit (None), the deadline or the cancel event; raise if a pump failed."""
    loop = asyncio.get_running_loop()
    cancel_task = asyncio.create_task(cancel.wait()) if cancel is not None else None
    watched: set[asyncio.Future[Any]] = {exited, *pumps}
    if cancel_task is not None:
        watched.add(cancel_task)
    try:
        while True:
            if proc.returncode is not None:
                return None  # the exit wins a tie with the deadline
            remaining = deadline - loop.time()
            if remaining <= 0:
                return TimedOut()
            done, _ = await asyncio.wait(
                watched, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            # The exit wins a tie: the outcome is decided when the script exits.
            if exited in done:
                return None
            for task in done:
                if task is cancel_task:
                    return Cancelled()
                task.result()  # a pump: re-raises what on_line raised; EOF alone ends nothing
                watched.discard(task)
    finally:
        if cancel_task is not None:
            cancel_task.cancel()
            await asyncio.wait([cancel_task])


async def _wait_exit(proc: asyncio.subprocess.Process) -> int:
    """Return the exit status as soon as the child is reaped, whoever holds its pipes."""
    while proc.returncode is None:  # noqa: ASYNC110 - the kill paths only; see _EXIT_POLL_S
        await asyncio.sleep(_EXIT_POLL_S)
    return proc.returncode


async def _drain(pumps: list[asyncio.Task[None]], drain_s: float) -> None:
    """Let the pumps read what is left for at most `drain_s`; raise what on_line raised."""
    done, pending = await asyncio.wait(pumps, timeout=drain_s)
    for task in done:
        task.result()
    if pending:
        log.info("sandbox.pipe_dropped", reason="a process the script started holds its output")


async def _clean_up(
    proc: asyncio.subprocess.Process,
    pgid: int,
    pumps: list[asyncio.Task[None]],
    *,
    job_id: str,
    kill: bool,
    kill_grace_s: float,
    drain_s: float,
) -> tuple[int, ...]:
    """Kill the job's processes if asked, stop reading, drop the pipes, reap the leader."""
    swept: tuple[int, ...] = ()
    if kill:
        await _kill_group(proc, pgid, kill_grace_s)
        swept = await _sweep(job_id, pgid=pgid)
        # Everything that could write is dead now: read what it wrote last (often why it
        # failed), briefly, unless on_line is what failed.
        await asyncio.wait(pumps, timeout=drain_s)
    for task in pumps:
        task.cancel()
    if not all(task.done() for task in pumps):  # after a plain exit they are done already
        await asyncio.wait(pumps)
    for task in pumps:
        if not task.cancelled():
            task.exception()  # retrieved here, so asyncio does not report it a second time
    # Drop our ends of the pipes: a daemon that kept them is no reason to hold the run open.
    # Process has no public close; its transport's close() only kills a leader still alive.
    transport = getattr(proc, "_transport", None)
    if isinstance(transport, asyncio.SubprocessTransport):
        transport.close()
    if proc.returncode is None and not await _returncode_within(proc, _REAP_TIMEOUT_S):
        log.error("sandbox.unreaped", pid=proc.pid, waited_s=_REAP_TIMEOUT_S)
    return swept


async def _kill_group(proc: asyncio.subprocess.Process, pgid: int, kill_grace_s: float) -> None:
    """SIGTERM the group, give the leader `kill_grace_s` to exit, then SIGKILL the group."""
    if proc.returncode is None or _group_alive(pgid):
        log.info("sandbox.signal", signal="SIGTERM", pgid=pgid)
        _signal_group(pgid, signal.SIGTERM)
        await _returncode_within(proc, kill_grace_s)
    # SIGKILL even when the leader is gone: members that ignored SIGTERM may still run.
    if _signal_group(pgid, signal.SIGKILL):
        log.info("sandbox.signal", signal="SIGKILL", pgid=pgid)


async def _returncode_within(proc: asyncio.subprocess.Process, timeout_s: float) -> bool:
    """Whether the child has been reaped within `timeout_s`."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_wait_exit(proc), timeout_s)
    return proc.returncode is not None


def _group_alive(pgid: int) -> bool:
    """Whether any process (a zombie included) is still in process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send `sig` to process group `pgid`; False when the group is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


async def _sweep(job_id: str, *, pgid: int | None) -> tuple[int, ...]:
    """SIGKILL every process whose environment carries this job's id; return the escaped ones.

    Members of the job's own group were already killed with it and are not reported.
    """
    entry = f"{JOB_ID_VARIABLE}={job_id}".encode()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SWEEP_TIMEOUT_S
    escaped: set[int] = set()
    while True:
        found = await asyncio.to_thread(_pids_with_entry, entry)
        if not found:
            break
        for pid in found:
            try:
                in_group = pgid is not None and os.getpgid(pid) == pgid
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue  # gone already, or not ours to kill
            if not in_group:
                escaped.add(pid)
        if loop.time() >= deadline:
            log.error("sandbox.sweep_incomplete", pids=sorted(found))
            break
        # A killed process keeps its environment readable until it has exited.
        await asyncio.sleep(_SWEEP_PAUSE_S)
    if escaped:
        log.warning("sandbox.swept", pids=sorted(escaped))
    return tuple(sorted(escaped))


def _pids_with_entry(entry: bytes) -> list[int]:
    """Pids (other than ours) whose /proc environ holds exactly `entry`; zombies have none."""
    me = os.getpid()
    found: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as environ:
                entries = environ.read().split(b"\0")
        except OSError:
            continue  # exited meanwhile, or another user's process we may not read
        if entry in entries:
            found.append(int(name))
    return found


async def _pump(
    reader: asyncio.StreamReader, stream: str, on_line: OnLine, max_line_bytes: int
) -> None:
    """Read `reader` in chunks until EOF and hand each line to `on_line`, in order.

    StreamReader.readline raises on a line longer than its limit; here a long line is cut at
    `max_line_bytes`, marked, and the rest of it skipped, so memory stays bounded.
    """
    partial = bytearray()
    skipping = False  # the current line was already handed over, cut: drop it to its end
    while chunk := await reader.read(_CHUNK_BYTES):
        pieces = chunk.split(b"\n")
        for piece in pieces[:-1]:
            if skipping:
                skipping = False
                continue
            if partial:
                partial += piece
                data = bytes(partial)
                partial.clear()
            else:
                data = piece
            await on_line(stream, _decode_line(data, max_line_bytes))
        if not skipping:
            partial += pieces[-1]
            if len(partial) > max_line_bytes:
                await on_line(stream, _decode_line(bytes(partial), max_line_bytes))
                partial.clear()
                skipping = True
    if partial:
        await on_line(stream, _decode_line(bytes(partial), max_line_bytes))


def _decode_line(data: bytes, max_line_bytes: int) -> str:
    """Decode one line (UTF-8, invalid bytes replaced), cut and marked when too long."""
    if len(data) <= max_line_bytes:
        return data.decode("utf-8", "replace").rstrip("\r")
    end = max_line_bytes
    # Cut on a character boundary: back off over UTF-8 continuation bytes (at most three).
    for _ in range(3):
        if end > 0 and data[end] & 0xC0 == 0x80:
            end -= 1
    return data[:end].decode("utf-8", "replace") + TRUNCATION_SUFFIX


async def _uncancellable(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run `coro` to its end even if we are cancelled meanwhile, then re-raise the cancel.

    Cleanup must not be cut short by a second cancel (agent shutdown on top of a timeout):
    a half-done kill would leave the installer's processes running.
    """
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            # Unlike awaiting the task, wait() leaves it running when we are cancelled.
            await asyncio.wait([task])
        except asyncio.CancelledError:
            cancelled = True  # keep waiting; the cancel is passed on once cleanup is done
    if cancelled:
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox.cleanup_failed", error=repr(task.exception()))
        raise asyncio.CancelledError
    return task.result()


async def sweep_job_processes(job_id: str) -> tuple[int, ...]:
    """Kill every process left from an earlier run of `job_id` (an agent died mid-run).

    A script runs in its own session, so it outlives the agent that started it; before the
    next attempt starts on this host, what is left of the previous one must go.
    """
    return await _sweep(job_id, pgid=None)
