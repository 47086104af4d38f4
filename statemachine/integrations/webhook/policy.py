"""Pure delivery decisions: what an HTTP answer means, and how long to wait before again.

    2xx                          delivered
    408, 429, 5xx, no answer     retried (connection error, timeout), up to `max_attempts`
    anything else (3xx, 4xx)     permanent: straight to the dead letters

A redirect is not followed (the signed body would go to an address nobody configured), so a
3xx is permanent like a 4xx. Delays grow exponentially from `base_s`, capped at `max_s`, with
"equal jitter" (between half and all of the step) so many forwarders that failed together do
not retry together; a `Retry-After` the receiver sends is honoured up to `max_s`.
"""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass
from typing import Final

DEFAULT_MAX_ATTEMPTS: Final = 8
DEFAULT_BASE_S: Final = 1.0
DEFAULT_MAX_S: Final = 60.0
_RETRIED_STATUSES: Final = frozenset({408, 429})
# Ten digits of seconds is over 300 years, past any cap; a longer number is not a wait a
# receiver means (and a few hundred digits no longer fit a float), so it is ignored.
_MAX_RETRY_AFTER_DIGITS: Final = 10


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently one event is retried."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_s: float = DEFAULT_BASE_S
    max_s: float = DEFAULT_MAX_S

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not (0 < self.base_s <= self.max_s) or not math.isfinite(self.max_s):
            raise ValueError("backoff needs 0 < base_s <= max_s, both finite")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one POST came to: an HTTP status, or none when no answer came (`error` says why)."""

    status: int | None
    error: str = ""
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Delivered:
    """The receiver took the event (2xx)."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again after `delay_s`."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class Bury:
    """Give up: move the event to the dead letters with `error`."""

    error: str


Decision = Delivered | Retry | Bury


def is_retryable(outcome: Outcome) -> bool:
    """Whether a failed attempt may succeed later (no answer, 408, 429, 5xx)."""
    status = outcome.status
    return status is None or status in _RETRIED_STATUSES or 500 <= status <= 599


def describe(outcome: Outcome) -> str:
    """A short account of a failed attempt for logs and dead letters."""
    head = f"http {outcome.status}" if outcome.status is not None else "no answer"
    return f"{head}: {outcome.error}" if outcome.error else head


def backoff_s(policy: RetryPolicy, failures: int, *, jitter: float) -> float:
    """The wait after the `failures`-th failed attempt; `jitter` is uniform in [0, 1)."""
    exponent = min(max(failures - 1, 0), 62)  # 2**62 * base is past any cap; no overflow
    step = min(policy.max_s, policy.base_s * (2.0**exponent))
    return step / 2 + step / 2 * min(max(jitter, 0.0), 1.0)


def decide(policy: RetryPolicy, attempt: int, outcome: Outcome, *, jitter: float) -> Decision:
    """What to do after attempt number `attempt` (1 for the first) came to `outcome`."""
    if outcome.status is not None and 200 <= outcome.status <= 299:
        return Delivered()
    if not is_retryable(outcome):
        return Bury(describe(outcome))
    if attempt >= policy.max_attempts:
        return Bury(f"{describe(outcome)} (after {attempt} attempts)")
    delay = backoff_s(policy, attempt, jitter=jitter)
    if outcome.retry_after_s is not None:
        delay = max(delay, min(outcome.retry_after_s, policy.max_s))
    return Retry(delay)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (seconds or an HTTP date), else None.

    A value that cannot be read (malformed, absurdly long, an impossible date) is None: the
    answer is then retried on the usual backoff, never an error.
    """
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0") or "0"
        return float(digits) if len(digits) <= _MAX_RETRY_AFTER_DIGITS else None
    try:
        moment = email.utils.parsedate_to_datetime(text)
        # An HTTP date is always GMT: one without a zone is not an HTTP date.
        return max(0.0, moment.timestamp() - now) if moment.tzinfo is not None else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
