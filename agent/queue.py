"""The agent's side of a target's job stream: group reads, lease renewal, and requeue.

Only the agent uses these, so they live here with their Lua (`agent/lua/`), not in the
event store. Each is one round trip:

    read_new_entries  new entries for this consumer, without blocking, each with the snapshot
                      of the job it names (read_entries.lua)
    renew_leases      re-claim the entries this consumer still owns; the ones another took
                      are reported lost (renew_leases.lua)
    requeue_due       a due `retry_wait` job's entry copied to a fresh one that alone carries
                      the job, in one atomic step (requeue.lua)
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files

import redis.asyncio as aioredis

from core.keys import RedisKeys
from core.text import as_text

# An entry read with its job: (entry id, its fields, the snapshot of the job it names).
Entry = tuple[str, dict[bytes | str, bytes | str], dict[str, str]]


def _script(name: str) -> str:
    return files("agent").joinpath("lua", name).read_text(encoding="utf-8")


class JobQueue:
    """The job streams of one namespace, as an agent reads and renews them."""

    def __init__(self, client: aioredis.Redis, keys: RedisKeys) -> None:
        self.keys = keys
        self._requeue = client.register_script(_script("requeue.lua"))
        self._renew = client.register_script(_script("renew_leases.lua"))
        self._read_entries = client.register_script(_script("read_entries.lua"))

    async def read_new_entries(
        self, stream: str, group: str, consumer: str, count: int
    ) -> list[Entry]:
        """Up to `count` new entries for `consumer`, without blocking, each with the snapshot
        of the job it names ({} when it names none that exists), in one round trip.

        The job id is read from the unverified entry only to pick the snapshot: the caller
        must check that the snapshot's `job_id` is the one it reads from the entry itself.
        """
        reply = await self._read_entries(
            keys=[stream], args=[group, consumer, count, self.keys.job("")]
        )
        entries: list[Entry] = []
        for entry_id, flat_fields, flat_snapshot in reply:
            fields = dict(zip(flat_fields[::2], flat_fields[1::2], strict=True))
            snapshot = {
                as_text(name): as_text(value)
                for name, value in zip(flat_snapshot[::2], flat_snapshot[1::2], strict=True)
            }
            entries.append((as_text(entry_id), fields, snapshot))
        return entries

    async def renew_leases(
        self, stream: str, group: str, consumer: str, entry_ids: Sequence[str]
    ) -> list[str]:
        """Re-claim the entries `consumer` still owns; return the ones it lost to another."""
        if not entry_ids:
            return []
        lost = await self._renew(keys=[stream], args=[group, consumer, *entry_ids])
        return [as_text(entry_id) for entry_id in lost]

    async def requeue_due(self, job_id: str, *, target: str, now_ms: int) -> tuple[int, str]:
        """Copy a due `retry_wait` job's entry to a fresh one that now carries the job.

        Returns (1, new entry id), (0, why nothing was done) or (-1, why it cannot go on).
        """
        result = await self._requeue(
            keys=[self.keys.job(job_id), self.keys.retry, self.keys.jobs_stream(target)],
            args=[job_id, str(now_ms)],
        )
        return int(result[0]), as_text(result[1])
