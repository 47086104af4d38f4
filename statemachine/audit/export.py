"""Export of the global event stream to a JSON-lines file, and its offline verification.

The file is what an auditor takes away: it is checked with nothing but the key ring
(`provision audit verify --file F`). Lines:

1. a header: `{"format": "provision-events", "v": 1, "namespace": ..., "created_at": ms,
   "since_ms": ms or null, "before_ms": ms or null, "archive_id": id or null,
   "continues": bool}` (`continues`: an earlier archive holds the start of some chains);
2. one line per stream entry: `{"id": "<stream id>", "fields": [name, value, name, value,
   ...]}`, the entry's fields exactly as stored (strings; bytes that are not UTF-8 survive as
   escaped surrogates), so every `hash` and `mac` checks exactly as it did in Redis;
3. a trailer: `{"end": true, "events": n, "jobs": m, "last_id": ..., "sha256": <hex SHA-256
   of every byte before the trailer>, "kid": ..., "mac": <HMAC of that hex under kid>}`.

Each event is MACed on its own; the trailer's MAC also makes a truncated or extended file,
or a dropped last event, visible.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from core.errors import TamperError
from core.keyring import KeyRing
from core.signing import sign, signature_problem
from statemachine.audit.history import HistoryPass, PassedJob
from statemachine.audit.raw_reads import raw_entries
from statemachine.store import EventStore, now_ms

FORMAT: Final = "provision-events"
FORMAT_VERSION: Final = 1


def _line(obj: dict[str, Any]) -> bytes:
    # ensure_ascii keeps escaped surrogates (from non-UTF-8 bytes) writable and exact.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


@dataclass(slots=True)
class ExportResult:
    """What an export wrote."""

    path: Path
    events: int
    jobs: int
    sha256: str
    last_id: str


async def export_events(
    store: EventStore,
    ring: KeyRing,
    out: Path,
    *,
    since_ms: int | None = None,
    before_ms: int | None = None,
    end: str | None = None,
    archive_id: str | None = None,
    continues: bool = False,
    replace_existing: bool = True,
) -> ExportResult:
    """Write the global stream's entries (from `since_ms`, before `before_ms`) to `out`.

    The file appears under its name (an absolute path) only once complete: it is written
    beside it, then renamed, readable by its owner only.
    """
    if not out.is_absolute():
        raise ValueError(f"the export path must be absolute, not {out}")
    digest = hashlib.sha256()
    events = 0
    jobs: set[bytes] = set()
    last_id = ""
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(handle, "wb") as sink:
            header = {
                "format": FORMAT,
                "v": FORMAT_VERSION,
                "namespace": store.keys.namespace,
                "created_at": now_ms(),
                "since_ms": since_ms,
                "before_ms": before_ms,
                "archive_id": archive_id,
                "continues": continues or since_ms is not None,
            }
            _write(sink, digest, _line(header))
            start = "-" if since_ms is None else f"{since_ms}-0"
            if end is None:
                end = "+" if before_ms is None else f"({before_ms}-0"
            async for stream_id, flat in raw_entries(
                store.client, store.keys.events, start=start, end=end
            ):
                _write(sink, digest, _line({"id": stream_id, "fields": [_decode(v) for v in flat]}))
                events += 1
                last_id = stream_id
                jobs.add(dict(zip(flat[0::2], flat[1::2], strict=False)).get(b"job_id", b""))
            hex_digest = digest.hexdigest()
            kid, mac = sign(ring, hex_digest.encode())
            trailer = {
                "end": True,
                "events": events,
                "jobs": len(jobs),
                "last_id": last_id,
                "sha256": hex_digest,
                "kid": kid,
                "mac": mac,
            }
            sink.write(_line(trailer))
            sink.flush()
            os.fsync(sink.fileno())
        os.chmod(temporary, 0o600)
        if replace_existing:
            os.replace(temporary, out)
        else:
            # A link fails if the name exists: an archive never replaces another file.
            os.link(temporary, out)
            os.unlink(temporary)
        _sync_folder(out.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return ExportResult(path=out, events=events, jobs=len(jobs), sha256=hex_digest, last_id=last_id)


def _sync_folder(folder: Path) -> None:
    # The new name is durable only once the folder is: an archive trims Redis right after.
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write(sink: IO[bytes], digest: Any, line: bytes) -> None:  # noqa: ANN401 - hashlib object
    digest.update(line)
    sink.write(line)


@dataclass(slots=True)
class FileVerdict:
    """What the offline verification of an export found."""

    header: dict[str, Any] = field(default_factory=dict)
    events: int = 0
    jobs: int = 0
    last_id: str = ""
    file_sha256: str = ""
    # Problems with the file itself (format, trailer, truncation), not with one job.
    file_problems: list[str] = field(default_factory=list)
    failing: list[PassedJob] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the file and every job in it verify."""
        return not self.file_problems and not self.failing


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as source:
        yield from enumerate(source, start=1)


def verify_export(
    path: Path, ring: KeyRing, *, on_job: Callable[[PassedJob], None] | None = None
) -> FileVerdict:
    """Check an export with the key ring alone: every event, chain and transition, the trailer.

    Raises OSError when the file cannot be read.
    """
    verdict = FileVerdict()
    digest = hashlib.sha256()
    history: HistoryPass | None = None
    trailer: dict[str, Any] | None = None

    def finished(job: PassedJob) -> None:
        verdict.jobs += 1
        if job.replayed.problems:
            verdict.failing.append(job)
        if on_job is not None:
            on_job(job)

    for number, line in _lines(path):
        if trailer is not None:
            verdict.file_problems.append(f"line {number}: data after the trailer")
            break
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            if number == 1:
                verdict.file_problems.append("not a provision event export (no header)")
                return verdict
            verdict.file_problems.append(f"line {number}: not JSON")
            digest.update(line)
            continue
        if number == 1:
            digest.update(line)
            if not isinstance(obj, dict) or obj.get("format") != FORMAT:
                verdict.file_problems.append("not a provision event export (no header)")
                return verdict
            if obj.get("v") != FORMAT_VERSION:
                verdict.file_problems.append(f"unknown export version {obj.get('v')!r}")
                return verdict
            verdict.header = obj
            partial = "anchor" if obj.get("continues") else "report"
            history = HistoryPass(ring, finished, partial=partial)
            continue
        assert history is not None
        if isinstance(obj, dict) and obj.get("end") is True:
            trailer = obj
            continue
        digest.update(line)
        entry = _entry(obj)
        if entry is None:
            verdict.file_problems.append(f"line {number}: not an event entry")
            continue
        history.add(*entry)
        verdict.events += 1
        verdict.last_id = entry[0]
    if history is None:
        verdict.file_problems.append("empty file")
        return verdict
    history.finish()
    verdict.file_sha256 = digest.hexdigest()
    verdict.file_problems.extend(_trailer_problems(trailer, verdict, ring))
    return verdict


def _entry(obj: object) -> tuple[str, list[bytes]] | None:
    if not isinstance(obj, dict):
        return None
    stream_id, fields = obj.get("id"), obj.get("fields")
    if not isinstance(stream_id, str) or not isinstance(fields, list) or len(fields) % 2:
        return None
    if not all(isinstance(value, str) for value in fields):
        return None
    return stream_id, [value.encode("utf-8", "surrogateescape") for value in fields]


def _trailer_problems(
    trailer: dict[str, Any] | None, verdict: FileVerdict, ring: KeyRing
) -> list[str]:
    if trailer is None:
        return ["no trailer: the export is truncated"]
    problems: list[str] = []
    if trailer.get("sha256") != verdict.file_sha256:
        problems.append("the file's content does not match its trailer (edited or truncated)")
    mac_problem = signature_problem(
        ring, trailer.get("kid"), str(trailer.get("sha256", "")).encode(), trailer.get("mac")
    )
    if mac_problem:
        problems.append(f"trailer: {mac_problem}")
    if trailer.get("events") != verdict.events:
        problems.append(
            f"trailer says {trailer.get('events')} events, the file holds {verdict.events}"
        )
    return problems


def file_problem_errors(verdict: FileVerdict) -> list[TamperError]:
    """The file's own problems as errors naming no job."""
    return [TamperError("(file)", "", problem) for problem in verdict.file_problems]
