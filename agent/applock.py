"""One job per app per host: an asyncio lock within the agent, a file lock across agents.

Installers of one app fight over the same package manager lock and the same config files,
so docs/architecture.md §6 forbids running two at once on one host. The in-process lock orders this
agent's own jobs; `flock` on a file under the lock folder extends that to every agent
process on the host (two agents of different targets, or a restarted agent whose previous
self is still draining). The kernel drops a `flock` when its holder dies, so a crashed agent
never leaves an app locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Final

DEFAULT_LOCK_DIR: Final = Path("/run/lock/provision")
# While another agent holds the app, the lock is tried again after a pause that starts short
# and doubles up to the cap: a fixed 0.2 s cost two agents sharing short jobs a tenth of a
# second at every collision (their throughput fell below that of one agent), while a long
# install still costs only five tries a second.
_FIRST_POLL_S: Final = 0.002
_MAX_POLL_S: Final = 0.2


def lock_dir() -> Path:
    """The host-wide lock folder: /run/lock/provision, or one in the temp folder."""
    for candidate in (DEFAULT_LOCK_DIR, Path("/tmp/provision-locks")):  # noqa: S108
        try:
            candidate.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise OSError("no writable folder for the per-app locks")


class AppLocks:
    """Hands out the per-app lock of this host."""

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder or lock_dir()
        self._local: dict[str, asyncio.Lock] = {}
        # Jobs of this agent holding or waiting for each app. asyncio.Lock.locked() is False
        # for a moment after a release while a waiter is about to take it, and `hold_if_free`
        # must never queue behind that waiter.
        self._wanted: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, app_id: str) -> AsyncIterator[None]:
        """Wait until no other job of `app_id` runs on this host, then hold the app."""
        with self._wanting(app_id):
            async with self._local.setdefault(app_id, asyncio.Lock()):
                # app_id matches ^[a-z0-9][a-z0-9_-]*$ (checked by the whitelist layer).
                fd = os.open(self._folder / f"{app_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    pause = _FIRST_POLL_S
                    while not _try_flock(fd):
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, _MAX_POLL_S)
                    try:
                        yield
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    os.close(fd)

    @contextlib.asynccontextmanager
    async def hold_if_free(self, app_id: str) -> AsyncIterator[bool]:
        """Hold the app if no job of it runs on this host right now; yields whether it does.

        Never waits: a caller that gets False takes its slow path (which waits with `hold`).
        """
        if self._wanted.get(app_id):
            yield False
            return
        with self._wanting(app_id):
            async with self._local.setdefault(app_id, asyncio.Lock()):  # free: taken at once
                fd = os.open(self._folder / f"{app_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    if not _try_flock(fd):
                        yield False
                        return
                    try:
                        yield True
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    os.close(fd)

    @contextlib.contextmanager
    def _wanting(self, app_id: str) -> Iterator[None]:
        """Count a job of this agent as holding or waiting for `app_id` while inside."""
        self._wanted[app_id] = self._wanted.get(app_id, 0) + 1
        try:
            yield
        finally:
            self._wanted[app_id] -= 1
            if not self._wanted[app_id]:
                del self._wanted[app_id]


def _try_flock(fd: int) -> bool:
    """Take the exclusive `flock` on `fd` if no other process holds it; True if taken."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
