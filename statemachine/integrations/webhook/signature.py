"""The webhook signature: `X-Provision-Signature: t=<unix seconds>,v1=<hex>` (Stripe's scheme).

`v1` is the hex HMAC-SHA256, under the shared secret, of `"<t>.<raw body>"`. Signing the
timestamp with the body lets a receiver refuse a replayed request once it is older than its
tolerance. Pure functions of bytes, a secret and an explicit `now`; standard library only, so
a receiver can copy this file or import it without the rest of the project.

    ok = verify_signature(secret, request.headers["X-Provision-Signature"], raw_body,
                          tolerance_s=300, now=time.time())

Headers are not signed: a receiver deduplicates on the verified body's `event_id` (which
`Idempotency-Key` repeats), so a replay with another key is still recognised.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

SIGNATURE_HEADER: Final = "X-Provision-Signature"
SCHEME: Final = "v1"
DEFAULT_TOLERANCE_S: Final = 300.0
# A header is a handful of fields; refusing long ones early bounds the work an attacker buys.
_MAX_HEADER_LEN: Final = 2048
_HEX_DIGITS: Final = frozenset("0123456789abcdef")
# Unix seconds have 10 digits until the year 2286; a longer `t` is no time a sender wrote
# (and past 308 digits it no longer fits a float, which the tolerance check needs).
_MAX_TIMESTAMP_DIGITS: Final = 12


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def compute_signature(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def signature_header(secret: str | bytes, body: bytes, *, timestamp: int) -> str:
    """The `X-Provision-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},{SCHEME}={compute_signature(secret, timestamp, body)}"


def _parse(header: str) -> tuple[int, list[str]] | None:
    """(timestamp, v1 signatures) of a well-formed header, else None."""
    if len(header) > _MAX_HEADER_LEN:
        return None
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            return None
        if name == "t":
            if timestamp is not None or not (value.isascii() and value.isdigit()):
                return None
            if len(value) > _MAX_TIMESTAMP_DIGITS:
                return None
            timestamp = int(value)
        elif name == SCHEME:
            if len(value) != 64 or not set(value) <= _HEX_DIGITS:
                return None
            signatures.append(value)
        # Other schemes (a future v2) are ignored, so receivers keep working during a change.
    if timestamp is None or not signatures:
        return None
    return timestamp, signatures


def verify_signature(
    secret: str | bytes,
    header: str | None,
    body: bytes,
    tolerance_s: float,
    now: float,
) -> bool:
    """True when `header` signs exactly `body` under `secret` within `tolerance_s` of `now`.

    `body` must be the raw bytes as received, before any JSON parsing. A missing, malformed
    or stale header (more than `tolerance_s` from `now`, unix seconds: pass `time.time()`),
    a tampered body or another secret all give False.
    """
    if not header:
        return False
    parsed = _parse(header)
    if parsed is None:
        return False
    timestamp, signatures = parsed
    if not abs(now - timestamp) <= tolerance_s:  # also refuses a NaN `now`
        return False
    expected = compute_signature(secret, timestamp, body)
    # Compare against every v1 given (a sender may sign with an old and a new secret while
    # rotating), each in constant time, and without stopping at the first match.
    matched = False
    for candidate in signatures:
        matched |= hmac.compare_digest(expected, candidate)
    return matched
