"""The per-app lock: `hold` waits its turn, `hold_if_free` never waits."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from agent.applock import AppLocks


async def test_hold_if_free_holds_a_free_app_and_then_hold_waits_for_it(tmp_path: Path) -> None:
    locks = AppLocks(tmp_path)
    order: list[str] = []
    async with locks.hold_if_free("web") as held:
        assert held
        waiter = asyncio.create_task(_hold_and_note(locks, "web", order))
        await asyncio.sleep(0.05)
        assert order == []  # still waiting for us
        order.append("first done")
    await waiter
    assert order == ["first done", "second held"]


async def test_hold_if_free_says_no_while_this_agent_holds_or_awaits_the_app(
    tmp_path: Path,
) -> None:
    locks = AppLocks(tmp_path)
    release = asyncio.Event()
    holder = asyncio.create_task(_hold_until(locks, "web", release))
    await asyncio.sleep(0.01)
    async with locks.hold_if_free("web") as held:
        assert not held
    async with locks.hold_if_free("db") as held:
        assert held  # another app is free
    release.set()
    await holder
    async with locks.hold_if_free("web") as held:
        assert held


async def test_hold_if_free_never_jumps_in_right_after_a_release_with_a_job_waiting(
    tmp_path: Path,
) -> None:
    """In the instant after a holder lets go, its lock reads as unlocked while the waiter it
    woke has not run yet: a newcomer must neither take the app nor queue behind that job."""
    locks = AppLocks(tmp_path)
    release, seen = asyncio.Event(), []

    async def holder_then_newcomer() -> None:
        async with locks.hold("web"):
            await release.wait()
        # Still this task, before the woken waiter runs.
        async with locks.hold_if_free("web") as held:
            seen.append(held)

    holder = asyncio.create_task(holder_then_newcomer())
    await asyncio.sleep(0.01)
    order: list[str] = []
    waiter = asyncio.create_task(_hold_and_note(locks, "web", order))
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.wait_for(holder, timeout=5)  # a newcomer queued behind would hang here
    await waiter
    assert seen == [False]
    assert order == ["second held"]


async def test_hold_if_free_says_no_while_another_process_holds_the_app(tmp_path: Path) -> None:
    lock_file = tmp_path / "web.lock"
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import fcntl, os, sys\n"
        f"fd = os.open({str(lock_file)!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    locks = AppLocks(tmp_path)
    try:
        assert holder.stdout is not None and await holder.stdout.readline() == b"held\n"
        async with locks.hold_if_free("web") as held:
            assert not held
        async with locks.hold_if_free("web") as held:
            assert not held  # the refusal left nothing behind in this agent
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # it lets go and ends
        await asyncio.wait_for(holder.wait(), timeout=10)
    async with locks.hold_if_free("web") as held:
        assert held


async def _hold_and_note(locks: AppLocks, app_id: str, order: list[str]) -> None:
    async with locks.hold(app_id):
        order.append("second held")


async def _hold_until(locks: AppLocks, app_id: str, release: asyncio.Event) -> None:
    async with locks.hold(app_id):
        await release.wait()
