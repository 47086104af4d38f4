"""The event model of docs/architecture.md §5: fields, the per-job hash chain (`prev`, `hash`) and
`mac`.

An event's `hash` is `sha256:` + the hex SHA-256 of the canonical JSON of the event without
`hash` and `mac` (`v`, `at`, `attempt` as integers, `detail` as an object). `prev` is the hash
of the job's previous event (`""` for the first), so removing, reordering or editing an event
breaks the chain. `mac` is the HMAC-SHA256 of the `hash` string under key `kid` of the key
ring, so only a holder of the ring can forge a consistent chain.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring
from typing import Any, Final

from ulid import ULID

from core.errors import TamperError, UnknownKey
from core.keyring import KeyRing
from core.strict_json import StrictJSONError, strict_loads
from core.text import as_text

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
            "detail": canonical_detail(self.detail),
            "prev": self.prev,
            "kid": self.kid,
            "hash": self.hash,
            "mac": self.mac,
        }


# The canonical serialisation (core.signing.canonical_bytes), kept as one encoder: replay
# hashes every event of the history, and building an encoder per call costs a third of it.
_CANONICAL: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_detail(detail: Mapping[str, Any]) -> str:
    """The canonical JSON text of a `detail` object (as stored in the stream)."""
    return _CANONICAL.encode(dict(detail))


def _body_text(event: Event, detail_text: str) -> str:
    # The canonical JSON of `body()` written out in sorted key order, so that the detail's
    # canonical text (already at hand when it comes from the stream) is not encoded again.
    # test_statemachine checks that it equals canonical_bytes(event.body()). Strings go
    # through the encoder's own C string function (what it calls for a str with
    # ensure_ascii off), without its per-call dispatch.
    text = encode_basestring
    return (
        f'{{"actor":{text(event.actor)},"at":{event.at:d},"attempt":{event.attempt:d},'
        f'"detail":{detail_text},"dst":{text(event.dst)},"event_id":{text(event.event_id)},'
        f'"job_id":{text(event.job_id)},"kid":{text(event.kid)},"prev":{text(event.prev)},'
        f'"src":{text(event.src)},"trigger":{text(event.trigger)},"v":{event.v:d}}}'
    )


def _hash_of(event: Event, detail_text: str) -> str:
    return "sha256:" + hashlib.sha256(_body_text(event, detail_text).encode()).hexdigest()


def compute_hash(event: Event) -> str:
    """`sha256:` + hex SHA-256 of the canonical JSON of the event's body."""
    return _hash_of(event, canonical_detail(event.detail))


# One keyed HMAC state per secret, copied for each message: keying costs more than the
# message itself, and replay MACs every event of the history. Bounded by the ring's size.
_KEYED: dict[bytes, hmac.HMAC] = {}


def compute_mac(ring: KeyRing, kid: str, event_hash: str) -> str:
    """Hex HMAC-SHA256 of the hash string under key `kid`."""
    secret = ring.secret(kid)
    keyed = _KEYED.get(secret)
    if keyed is None:
        if len(_KEYED) > 64:
            _KEYED.clear()
        keyed = _KEYED[secret] = hmac.new(secret, digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update(event_hash.encode())
    return mac.hexdigest()


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


def integrity_problems(event: Event, ring: KeyRing, *, detail_text: str | None = None) -> list[str]:
    """What is wrong with one event on its own: a hash that does not match, a bad mac.

    `detail_text` is the detail's canonical text when the caller already has it.
    """
    problems: list[str] = []
    if event.v != EVENT_VERSION:
        problems.append(f"unknown event version {event.v}")
    expected_hash = _hash_of(
        event, canonical_detail(event.detail) if detail_text is None else detail_text
    )
    if expected_hash != event.hash:
        problems.append("hash does not match the event's content")
    try:
        expected_mac = compute_mac(ring, event.kid, event.hash)
    except UnknownKey:
        problems.append(f"mac made with unknown key {event.kid!r}")
    else:
        # As bytes: compare_digest refuses str with non-ASCII characters (TypeError), and a
        # forged mac may hold any text.
        if not hmac.compare_digest(expected_mac.encode(), event.mac.encode()):
            problems.append("bad mac")
    return problems


def event_from_fields(fields: Mapping[bytes | str, bytes | str], *, stream_id: str = "") -> Event:
    """Parse an event from Redis stream fields, strictly; a malformed one is tampering."""
    return parse_event(fields, stream_id=stream_id)[0]


def _parse_detail(raw: str) -> tuple[object, str]:
    """The detail's value and canonical text; strict (no duplicate keys, no NaN)."""
    try:
        value = json.loads(raw)
        # Fast path: text that re-encodes to itself is canonical, hence has no duplicate
        # key (the decoded object would be shorter) and no NaN (the encoder refuses it).
        if _CANONICAL.encode(value) == raw:
            return value, raw
    except (ValueError, RecursionError):
        pass  # strict_loads says why, as a StrictJSONError
    value = strict_loads(raw)
    text = _CANONICAL.encode(value)
    try:
        # A lone surrogate escape ("\\ud800") decodes to a string no UTF-8 can hold: the
        # event could never have been hashed, so it is malformed rather than a crash later.
        text.encode()
    except UnicodeEncodeError:
        raise StrictJSONError("a string holds a lone surrogate") from None
    return value, text


def parse_event(
    fields: Mapping[bytes | str, bytes | str], *, stream_id: str = ""
) -> tuple[Event, str]:
    """Parse an event strictly, returning it with its detail's canonical text."""
    try:
        values = {as_text(key): as_text(value) for key, value in fields.items()}
    except UnicodeDecodeError:
        raise TamperError("?", stream_id, "event is not valid UTF-8") from None
    return _parse_values(values, stream_id)


def parse_flat_event(flat: Sequence[bytes], *, stream_id: str = "") -> tuple[Event, str]:
    """`parse_event` for a raw entry: field names and values alternating, as bytes."""
    try:
        # One decode for the whole entry: a tenth of the cost of decoding 28 strings. A
        # separator inside a value (only a forged entry has one) shows as a wrong count.
        texts = _SEPARATOR.join(flat).decode().split(_TEXT_SEPARATOR)
        if len(texts) != len(flat):
            texts = [value.decode() for value in flat]
    except UnicodeDecodeError:
        raise TamperError("?", stream_id, "event is not valid UTF-8") from None
    values = dict(zip(texts[0::2], texts[1::2], strict=False))
    if len(values) * 2 != len(texts):
        job_id = values.get("job_id", "?")
        raise TamperError(job_id, values.get("event_id", stream_id), "malformed event")
    return _parse_values(values, stream_id)


_MAX_INTEGER_DIGITS: Final = 19
_SEPARATOR: Final = b"\x1e"
_TEXT_SEPARATOR: Final = "\x1e"


def _parse_values(values: dict[str, str], stream_id: str) -> tuple[Event, str]:
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
        # At most 19 digits: every real value fits in 64 bits, and a huge one would make
        # int() slow or refuse it (Python caps integer parsing at 4300 digits).
        if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_INTEGER_DIGITS):
            raise TamperError(job_id, event_id, f"malformed event: {name} is not an integer")
        integers[name] = int(raw)
    try:
        detail, detail_text = _parse_detail(values["detail"])
    except (StrictJSONError, ValueError) as error:
        raise TamperError(job_id, event_id, f"malformed event detail: {error}") from None
    if not isinstance(detail, dict):
        raise TamperError(job_id, event_id, "malformed event: detail is not an object")
    event = Event(
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
    return event, detail_text
