"""The event model of DESIGN §5: fields, the per-job hash chain (`prev`, `hash`) and `mac`.

An event's `hash` is `sha256:` + the hex SHA-256 of the canonical JSON of the event without
`hash` and `mac` (`v`, `at`, `attempt` as integers, `detail` as an object). `prev` is the hash
of the job's previous event (`""` for the first), so removing, reordering or editing an event
breaks the chain. `mac` is the HMAC-SHA256 of the `hash` string under key `kid` of the key
ring, so only a holder of the ring can forge a consistent chain.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from ulid import ULID

from core.errors import TamperError, UnknownKey
from core.keyring import KeyRing
from core.signing import canonical_bytes
from core.strict_json import StrictJSONError, strict_loads

EVENT_VERSION: Final = 1

FIELD_NAMES: Final = (
    "v",
    "event_id",
    "job_id",
    "trigger",
    "src",
    "dst",
    "at",
    "actor",
    "attempt",
    "detail",
    "prev",
    "kid",
    "hash",
    "mac",
)
_FIELD_SET: Final = frozenset(FIELD_NAMES)
_INTEGER_FIELDS: Final = frozenset({"v", "at", "attempt"})


@dataclass(frozen=True, slots=True)
class Event:
    """One state change of one job, as stored in both event streams."""

    v: int
    event_id: str
    job_id: str
    trigger: str
    src: str
    dst: str
    at: int
    actor: str
    attempt: int
    detail: Mapping[str, Any] = field(default_factory=dict)
    prev: str = ""
    kid: str = ""
    hash: str = ""
    mac: str = ""

    def body(self) -> dict[str, Any]:
        """The hashed part: every field but `hash` and `mac`."""
        return {
            "v": self.v,
            "event_id": self.event_id,
            "job_id": self.job_id,
            "trigger": self.trigger,
            "src": self.src,
            "dst": self.dst,
            "at": self.at,
            "actor": self.actor,
            "attempt": self.attempt,
            "detail": dict(self.detail),
            "prev": self.prev,
            "kid": self.kid,
        }

    def as_dict(self) -> dict[str, Any]:
        """The event as a JSON object (the API's and the SSE's shape)."""
        return {**self.body(), "hash": self.hash, "mac": self.mac}

    def stream_fields(self) -> dict[str, str]:
        """The event as Redis stream fields: every value a string, `detail` canonical JSON."""
        return {
            "v": str(self.v),
            "event_id": self.event_id,
            "job_id": self.job_id,
            "trigger": self.trigger,
            "src": self.src,
            "dst": self.dst,
            "at": str(self.at),
            "actor": self.actor,
            "attempt": str(self.attempt),
            "detail": canonical_bytes(dict(self.detail)).decode(),
            "prev": self.prev,
            "kid": self.kid,
            "hash": self.hash,
            "mac": self.mac,
        }


def compute_hash(event: Event) -> str:
    """`sha256:` + hex SHA-256 of the canonical JSON of the event's body."""
    return "sha256:" + hashlib.sha256(canonical_bytes(event.body())).hexdigest()


def compute_mac(ring: KeyRing, kid: str, event_hash: str) -> str:
    """Hex HMAC-SHA256 of the hash string under key `kid`."""
    return hmac.new(ring.secret(kid), event_hash.encode(), hashlib.sha256).hexdigest()


def new_event(
    ring: KeyRing,
    *,
    job_id: str,
    trigger: str,
    src: str,
    dst: str,
    at: int,
    actor: str,
    attempt: int,
    detail: Mapping[str, Any],
    prev: str,
    event_id: str | None = None,
) -> Event:
    """Build an event chained to `prev`, hashed, and MACed with the ring's newest key."""
    unsealed = Event(
        v=EVENT_VERSION,
        event_id=event_id or str(ULID()),
        job_id=job_id,
        trigger=trigger,
        src=src,
        dst=dst,
        at=at,
        actor=actor,
        attempt=attempt,
        detail=dict(detail),
        prev=prev,
        kid=ring.signing_kid,
    )
    event_hash = compute_hash(unsealed)
    return replace(unsealed, hash=event_hash, mac=compute_mac(ring, ring.signing_kid, event_hash))


def integrity_problems(event: Event, ring: KeyRing) -> list[str]:
    """What is wrong with one event on its own: a hash that does not match, a bad mac."""
    problems: list[str] = []
    if event.v != EVENT_VERSION:
        problems.append(f"unknown event version {event.v}")
    if compute_hash(event) != event.hash:
        problems.append("hash does not match the event's content")
    try:
        expected_mac = compute_mac(ring, event.kid, event.hash)
    except UnknownKey:
        problems.append(f"mac made with unknown key {event.kid!r}")
    else:
        if not hmac.compare_digest(expected_mac, event.mac):
            problems.append("bad mac")
    return problems


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def event_from_fields(fields: Mapping[bytes | str, bytes | str], *, stream_id: str = "") -> Event:
    """Parse an event from Redis stream fields, strictly; a malformed one is tampering."""
    try:
        values = {_text(key): _text(value) for key, value in fields.items()}
    except UnicodeDecodeError:
        raise TamperError("?", stream_id, "event is not valid UTF-8") from None
    job_id = values.get("job_id", "?")
    event_id = values.get("event_id", stream_id)
    names = set(values)
    if names != _FIELD_SET:
        missing = sorted(_FIELD_SET - names)
        extra = sorted(names - _FIELD_SET)
        raise TamperError(job_id, event_id, f"malformed event: missing {missing}, extra {extra}")
    integers: dict[str, int] = {}
    for name in _INTEGER_FIELDS:
        raw = values[name]
        if not (raw.isascii() and raw.isdigit()):
            raise TamperError(job_id, event_id, f"malformed event: {name} is not an integer")
        integers[name] = int(raw)
    try:
        detail = strict_loads(values["detail"])
    except StrictJSONError as error:
        raise TamperError(job_id, event_id, f"malformed event detail: {error}") from None
    if not isinstance(detail, dict):
        raise TamperError(job_id, event_id, "malformed event: detail is not an object")
    return Event(
        v=integers["v"],
        event_id=values["event_id"],
        job_id=values["job_id"],
        trigger=values["trigger"],
        src=values["src"],
        dst=values["dst"],
        at=integers["at"],
        actor=values["actor"],
        attempt=integers["attempt"],
        detail=detail,
        prev=values["prev"],
        kid=values["kid"],
        hash=values["hash"],
        mac=values["mac"],
    )
