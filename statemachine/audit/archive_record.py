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


def archive_pointer(ring: KeyRing, archive_id: str, job_id: str, last_hash: str) -> str:
    """The `archived_to` value of a job: the archive id, MACed together with the job.

    `<archive id>:<kid>:<mac>`, the MAC over archive id, job id and the job's last event
    hash, so a pointer can neither be invented nor moved to another job without the key.
    """
    kid, mac = sign(ring, _pointer_payload(archive_id, job_id, last_hash))
    return f"{archive_id}:{kid}:{mac}"


def pointer_archive_id(pointer: str) -> str:
    """The archive id a pointer names."""
    return pointer.split(":", 1)[0]


def pointer_problem(
    ring: KeyRing,
    pointer: str,
    *,
    job_id: str,
    last_hash: str,
    archives: dict[str, ArchiveRecord],
) -> str | None:
    """Why a job's `archived_to` cannot be trusted, or None when it holds."""
    archive_id, _, signed = pointer.partition(":")
    kid, _, mac = signed.partition(":")
    if archive_id not in archives:
        return f"archived to {archive_id!r}, an unknown archive"
    problem = signature_problem(ring, kid, _pointer_payload(archive_id, job_id, last_hash), mac)
    if problem is not None:
        return f"archive pointer: {problem} (not made for this job and its last event)"
    return None


def _pointer_payload(archive_id: str, job_id: str, last_hash: str) -> bytes:
    return f"archived|{archive_id}|{job_id}|{last_hash}".encode()
