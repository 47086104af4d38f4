"""Signed job envelopes (docs/architecture.md §3): canonical bytes, HMAC-SHA256, strict
verification.

The panel builds an `Envelope`, serialises it once with `canonical_bytes` and signs those
bytes with the ring's newest key. The stream entry carries exactly three fields: `envelope`
(the signed bytes), `sig` and `kid`.

The agent verifies in this order, and trusts nothing before the HMAC matches:

    kid known?  ──no──> UnknownKey        (unknown_key)
        │
    HMAC over the RAW bytes matches?  ──no──> BadSignature   (bad_signature)
        │
    strict parse, exact fields and types, envelope kid == stream kid?
        │                             ──no──> MalformedEnvelope  (malformed)
    issued_at <= now + skew, now <= expires_at, issued_at < expires_at?
        │                             ──no──> EnvelopeExpired    (expired)
        v
    Envelope

The bytes are never re-serialised to verify: two JSON encoders need not agree byte for byte,
and the point of signing bytes is that nothing has to. `peek_job_id` is the one exception to
"parse after verify": it reads only `job_id`, so the agent can tell which job a bad entry
speaks for and fail that job rather than leave it stuck (docs/architecture.md §6). Replay detection
needs
Redis and lives in the agent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from core.errors import BadSignature, EnvelopeExpired, MalformedEnvelope, UnknownKey
from core.keyring import KeyRing
from core.strict_json import StrictJSONError, strict_loads

ENVELOPE_VERSION = 1
DEFAULT_MAX_SKEW_S = 60
STREAM_FIELDS = ("envelope", "sig", "kid")

# A ULID in Crockford base32 as python-ulid prints it. The id becomes part of Redis key
# names (`prov:job:<id>`), so it is checked even before the signature: a peeked id with a
# `:` in it could otherwise name some other key.
JOB_ID_PATTERN = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
_SIG_PATTERN = re.compile(r"[0-9a-f]{64}")

_INT_FIELDS = ("v", "issued_at", "expires_at")
_STR_FIELDS = ("job_id", "app_id", "app_fingerprint", "target", "requested_by", "kid")
ENVELOPE_FIELDS = frozenset((*_INT_FIELDS, *_STR_FIELDS, "inputs", "sealed"))

InputValue = str | list[str]


def canonical_bytes(obj: Mapping[str, object]) -> bytes:
    """The one serialisation that is signed: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        dict(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sign(ring: KeyRing, payload: bytes) -> tuple[str, str]:
    """Sign `payload` with the ring's newest key: `(kid, hex HMAC-SHA256)`."""
    kid = ring.signing_kid
    return kid, _mac(ring.secret(kid), payload)


def _mac(secret: bytes, payload: bytes) -> str:
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def signature_problem(ring: KeyRing, kid: object, payload: bytes, sig: object) -> str | None:
    """Why `sig` is not the HMAC of `payload` under key `kid` of the ring, or None if it is."""
    if not isinstance(kid, str) or kid not in ring:
        return f"signed with unknown key {kid!r}"
    if not isinstance(sig, str) or not _SIG_PATTERN.fullmatch(sig):
        return "malformed signature"
    if not hmac.compare_digest(_mac(ring.secret(kid), payload), sig):
        return "bad signature"
    return None


@dataclass(frozen=True, slots=True)
class Envelope:
    """A job as the panel asked for it (docs/architecture.md §3); sealed passwords stay sealed
    here."""

    v: int
    job_id: str
    app_id: str
    app_fingerprint: str
    target: str
    inputs: Mapping[str, InputValue]
    sealed: Mapping[str, str]
    requested_by: str
    issued_at: int
    expires_at: int
    kid: str

    def to_dict(self) -> dict[str, object]:
        """The envelope as plain JSON-ready data (fresh dicts and lists)."""
        return {
            "v": self.v,
            "job_id": self.job_id,
            "app_id": self.app_id,
            "app_fingerprint": self.app_fingerprint,
            "target": self.target,
            "inputs": {
                name: list(value) if isinstance(value, list) else value
                for name, value in self.inputs.items()
            },
            "sealed": dict(self.sealed),
            "requested_by": self.requested_by,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "kid": self.kid,
        }


@dataclass(frozen=True, slots=True)
class SignedEnvelope:
    """The exact signed bytes with their signature and key id: one stream entry."""

    envelope_bytes: bytes
    sig: str
    kid: str
    # The envelope the bytes were made from, for the panel's own use (snapshot, events).
    envelope: Envelope | None = field(default=None, compare=False, repr=False)

    def stream_fields(self) -> dict[str, bytes | str]:
        """The three fields of the `prov:jobs:<target>` entry: envelope, sig, kid."""
        return {"envelope": self.envelope_bytes, "sig": self.sig, "kid": self.kid}


def read_stream_fields(fields: Mapping[Any, Any]) -> SignedEnvelope:
    """Pick envelope/sig/kid out of a stream entry's fields (bytes or str keys and values)."""
    found: dict[str, bytes] = {}
    for key, value in fields.items():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if name not in STREAM_FIELDS:
            continue
        if isinstance(value, str):
            found[name] = value.encode("utf-8")
        elif isinstance(value, bytes):
            found[name] = value
        else:
            raise MalformedEnvelope(f"stream field {name!r} is not a string")
    missing = [name for name in STREAM_FIELDS if name not in found]
    if missing:
        raise MalformedEnvelope(f"stream entry lacks {', '.join(missing)}")
    try:
        sig = found["sig"].decode("ascii")
        kid = found["kid"].decode("ascii")
    except UnicodeDecodeError:
        raise MalformedEnvelope("sig and kid must be ASCII") from None
    return SignedEnvelope(envelope_bytes=found["envelope"], sig=sig, kid=kid)


def build_envelope(
    *,
    job_id: str,
    app_id: str,
    app_fingerprint: str,
    target: str,
    inputs: Mapping[str, InputValue],
    sealed: Mapping[str, str],
    requested_by: str,
    now: int,
    ttl_s: int,
    kid: str = "",
) -> Envelope:
    """A version-1 envelope issued at `now` that expires `ttl_s` seconds later."""
    return Envelope(
        v=ENVELOPE_VERSION,
        job_id=job_id,
        app_id=app_id,
        app_fingerprint=app_fingerprint,
        target=target,
        inputs={
            name: list(value) if isinstance(value, list) else value
            for name, value in inputs.items()
        },
        sealed=dict(sealed),
        requested_by=requested_by,
        issued_at=now,
        expires_at=now + ttl_s,
        kid=kid,
    )


def sign_envelope(envelope: Envelope, ring: KeyRing) -> SignedEnvelope:
    """Serialise once and sign with the ring's newest key, setting the envelope's kid.

    An envelope that already names a different kid is refused with `ValueError`: its sealed
    values were sealed under that kid, and the agent opens them with the kid that signed.
    """
    kid = ring.signing_kid
    if envelope.kid and envelope.kid != kid:
        raise ValueError(f"envelope names key {envelope.kid!r} but the ring signs with {kid!r}")
    envelope = replace(envelope, kid=kid)
    data = envelope.to_dict()
    # The panel must never emit what the agent refuses: run the agent's own field checks.
    _check_fields(data)
    payload = canonical_bytes(data)
    signed_kid, sig = sign(ring, payload)
    return SignedEnvelope(envelope_bytes=payload, sig=sig, kid=signed_kid, envelope=envelope)


def peek_job_id(envelope_bytes: bytes) -> str:
    """Read only `job_id` from unverified bytes, to learn which job an entry speaks for.

    Nothing else of an unverified envelope may be trusted; the id only selects a snapshot,
    and the caller then verifies before acting. `MalformedEnvelope` if it cannot be read.
    """
    obj = _strict_loads(envelope_bytes)
    job_id = obj.get("job_id")
    if not isinstance(job_id, str):
        raise MalformedEnvelope("no string job_id")
    if not JOB_ID_PATTERN.fullmatch(job_id):
        raise MalformedEnvelope("job_id is not a ULID")
    return job_id


def verify_envelope(
    envelope_bytes: bytes,
    sig: str,
    kid: str,
    ring: KeyRing,
    *,
    now: int,
    max_skew_s: int = DEFAULT_MAX_SKEW_S,
    enforce_expiry: bool = True,
) -> Envelope:
    """Check key id, HMAC over the raw bytes, strict shape, then expiry; return the envelope.

    `enforce_expiry=False` is for a job that already left `queued` under this envelope: its
    redelivery must resume the job however long the install or its retries took.
    """
    if not isinstance(kid, str) or kid not in ring:
        raise UnknownKey(str(kid))
    # A signature that is not exactly what `sign` produces is simply a wrong signature;
    # checking the form first also keeps compare_digest on two ASCII strings of one length.
    if not isinstance(sig, str) or not _SIG_PATTERN.fullmatch(sig):
        raise BadSignature(kid)
    if not isinstance(envelope_bytes, bytes):
        raise BadSignature(kid)
    if not hmac.compare_digest(_mac(ring.secret(kid), envelope_bytes), sig):
        raise BadSignature(kid)
    obj = _strict_loads(envelope_bytes)
    _check_fields(obj)
    if obj["kid"] != kid:
        # The bytes were signed under the stream's kid, but they claim another: someone
        # moved a body between keys; the sealed values would open under the wrong key.
        raise MalformedEnvelope(f"envelope kid {obj['kid']!r} differs from stream kid {kid!r}")
    envelope = Envelope(
        v=obj["v"],
        job_id=obj["job_id"],
        app_id=obj["app_id"],
        app_fingerprint=obj["app_fingerprint"],
        target=obj["target"],
        inputs=obj["inputs"],
        sealed=obj["sealed"],
        requested_by=obj["requested_by"],
        issued_at=obj["issued_at"],
        expires_at=obj["expires_at"],
        kid=obj["kid"],
    )
    if enforce_expiry:
        check_expiry(envelope, now=now, max_skew_s=max_skew_s)
    return envelope


def check_expiry(envelope: Envelope, *, now: int, max_skew_s: int = DEFAULT_MAX_SKEW_S) -> None:
    """`EnvelopeExpired` if past `expires_at`, issued beyond the skew, or never valid."""
    issued_at, expires_at = envelope.issued_at, envelope.expires_at
    if now > expires_at or issued_at > now + max_skew_s or expires_at <= issued_at:
        raise EnvelopeExpired(issued_at, expires_at, now)


# --- strict parsing ---------------------------------------------------------------------


def _strict_loads(data: bytes) -> dict[str, Any]:
    if not isinstance(data, bytes):
        raise MalformedEnvelope("envelope is not bytes")
    try:
        # Decode ourselves: json.loads(bytes) would also guess UTF-16 and UTF-32.
        obj = strict_loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise MalformedEnvelope("not strict UTF-8 JSON (not UTF-8)") from None
    except StrictJSONError as error:
        raise MalformedEnvelope(f"not strict UTF-8 JSON: {error}") from None
    if not isinstance(obj, dict):
        raise MalformedEnvelope("the envelope is not a JSON object")
    return obj


def _is_text(value: object) -> bool:
    # A lone surrogate (from a "\ud800" escape) is not encodable text and could not have
    # come from canonical_bytes; refusing it here spares every later consumer.
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_fields(obj: Mapping[str, Any]) -> None:
    keys = set(obj)
    if keys != ENVELOPE_FIELDS:
        missing = sorted(ENVELOPE_FIELDS - keys)
        extra = sorted(keys - ENVELOPE_FIELDS)
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unknown {', '.join(extra)}")
        raise MalformedEnvelope("; ".join(parts))
    for name in _INT_FIELDS:
        # bool is a subclass of int; `true` is not a timestamp.
        if type(obj[name]) is not int:
            raise MalformedEnvelope(f"{name} must be an integer")
    if obj["v"] != ENVELOPE_VERSION:
        raise MalformedEnvelope(f"unsupported envelope version {obj['v']}")
    for name in _STR_FIELDS:
        if not _is_text(obj[name]):
            raise MalformedEnvelope(f"{name} must be a string")
    if not JOB_ID_PATTERN.fullmatch(obj["job_id"]):
        raise MalformedEnvelope("job_id is not a ULID")
    inputs = obj["inputs"]
    if not isinstance(inputs, Mapping):
        raise MalformedEnvelope("inputs must be an object")
    for name, value in inputs.items():
        if not _is_text(name):
            raise MalformedEnvelope("an input name is not a string")
        if isinstance(value, list):
            if not all(_is_text(item) for item in value):
                raise MalformedEnvelope(f"input {name!r} must be a list of strings")
        elif not _is_text(value):
            raise MalformedEnvelope(f"input {name!r} must be a string or a list of strings")
    sealed = obj["sealed"]
    if not isinstance(sealed, Mapping):
        raise MalformedEnvelope("sealed must be an object")
    for name, value in sealed.items():
        if not _is_text(name) or not _is_text(value):
            raise MalformedEnvelope("sealed must map names to strings")
    overlap = set(inputs) & set(sealed)
    if overlap:
        # A field is either clear or sealed; both would leave the agent to pick one.
        raise MalformedEnvelope(f"inputs and sealed both name {', '.join(sorted(overlap))}")
