"""The signed record `provision audit archive` leaves in Redis for each archive it wrote.

Kept in the hash `prov:audit:archives` (archive id -> JSON). Archived jobs' snapshots point to
an archive id (`archived_to`); the record says which file holds their events, its SHA-256,
the cut (`before`, and the last global entry it holds) and how many events and jobs went. It
is MACed with the key ring, so an archive pointer cannot be invented without the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from core.keyring import KeyRing
from core.keys import RedisKeys
from core.signing import canonical_bytes, sign, signature_problem


@dataclass(frozen=True, slots=True)
class ArchiveRecord:
    """One archive run, as recorded (and, when loaded, whether its MAC holds)."""

    archive_id: str
    file: str
    sha256: str
    before_ms: int
    last_entry_id: str
    events: int
    jobs: int
    created_at: int
    problem: str | None = None

    def body(self) -> dict[str, Any]:
        """The signed part."""
        return {
            "archive_id": self.archive_id,
            "file": self.file,
            "sha256": self.sha256,
            "before_ms": self.before_ms,
            "last_entry_id": self.last_entry_id,
            "events": self.events,
            "jobs": self.jobs,
            "created_at": self.created_at,
        }


async def save_archive_record(
    client: aioredis.Redis, keys: RedisKeys, ring: KeyRing, record: ArchiveRecord
) -> None:
    """Store the record, MACed with the ring's newest key."""
    body = record.body()
    kid, mac = sign(ring, canonical_bytes(body))
    await client.hset(
        keys.audit_archives, record.archive_id, json.dumps({**body, "kid": kid, "mac": mac})
    )


def _parse(archive_id: str, raw: str, ring: KeyRing) -> ArchiveRecord:
    try:
        data = json.loads(raw)
        body = {
            name: data[name] for name in ArchiveRecord.__dataclass_fields__ if name != "problem"
        }
        record = ArchiveRecord(**body)
    except (ValueError, KeyError, TypeError):
        return ArchiveRecord(archive_id, "", "", 0, "", 0, 0, 0, problem="malformed archive record")
    problem = signature_problem(ring, data.get("kid"), canonical_bytes(body), data.get("mac"))
    if record.archive_id != archive_id:
        problem = "archive record filed under another id"
    if problem is None:
        return record
    return ArchiveRecord(**{**body, "problem": f"archive {archive_id}: {problem}"})


async def load_archive_records(
    client: aioredis.Redis, keys: RedisKeys, ring: KeyRing
) -> dict[str, ArchiveRecord]:
    """Every archive record by id; a record whose MAC fails carries a `problem`."""
    raw = cast(dict[bytes, bytes], await client.hgetall(keys.audit_archives))
    records: dict[str, ArchiveRecord] = {}
    for key, value in raw.items():
        archive_id = key.decode("utf-8", "replace")
        records[archive_id] = _parse(archive_id, value.decode("utf-8", "replace"), ring)
    return records
