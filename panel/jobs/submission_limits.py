"""How much one user may submit: accepted jobs per minute, and jobs not yet finished.

Both limits are checked inside the atomic step that stores the job (`RequireBelow` guards of
the event store), so they hold across every panel process and only an accepted job counts:
a form refused for its inputs, a body that does not parse or an app that does not exist
counts nothing. The per-minute count is a fixed-window counter under `rate:submit:<user>`;
the unfinished jobs are a set under `unfinished:<user>`, which the store empties as each
job reaches `succeeded` or `failed`, whoever ends it. So a CI script may submit a fleet's
worth of jobs at once, while no one user can flood the queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from core.errors import ProvisionError
from core.keys import RedisKeys
from statemachine.store import AddMember, CountEvent, RequireBelow, SideEffect

PER_MINUTE: Final = "submissions_per_minute"
UNFINISHED: Final = "max_unfinished_per_user"
WINDOW_S: Final = 60
# The unfinished cap frees up as jobs end, which no clock predicts: a short wait to suggest.
UNFINISHED_RETRY_AFTER_S: Final = 10
# User names are bounded where users are made; cut anyway, so no value makes a huge key.
_SUBJECT_MAX: Final = 128


@dataclass(frozen=True, slots=True)
class SubmissionLimits:
    """PROV_SUBMISSIONS_PER_MINUTE and PROV_MAX_UNFINISHED_PER_USER."""

    per_minute: int
    max_unfinished: int


class SubmissionRefused(ProvisionError):
    """A submission over one of the limits; nothing of it was stored."""

    def __init__(self, limit: str, message: str, retry_after_s: int) -> None:
        self.limit = limit
        self.message = message
        self.retry_after_s = retry_after_s
        super().__init__(message)


def _jobs(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"


def _window(now_s: int) -> tuple[int, int]:
    """The current window's number, and the seconds until the next one starts."""
    window = now_s // WINDOW_S
    return window, max(1, (window + 1) * WINDOW_S - now_s)


def submission_guards(
    keys: RedisKeys, limits: SubmissionLimits, *, user: str, job_id: str, now_s: int
) -> list[SideEffect]:
    """The effects that check both limits and, if the job is stored, count it."""
    subject = user[:_SUBJECT_MAX]
    window, _ = _window(now_s)
    rate_key = keys.rate("submit", subject, window)
    unfinished_key = keys.unfinished(subject)
    return [
        RequireBelow(rate_key, limits.per_minute, PER_MINUTE, "counter"),
        RequireBelow(unfinished_key, limits.max_unfinished, UNFINISHED, "set"),
        CountEvent(rate_key, WINDOW_S + 1),
        AddMember(unfinished_key, job_id),
    ]


def refusal(limit: str, limits: SubmissionLimits, *, now_s: int) -> SubmissionRefused:
    """What to tell a user whose submission reached `limit` (one of the names above)."""
    if limit == PER_MINUTE:
        _, retry_after = _window(now_s)
        return SubmissionRefused(
            limit,
            f"too many submissions: at most {_jobs(limits.per_minute)} accepted per user "
            f"and minute (PROV_SUBMISSIONS_PER_MINUTE); try again in {retry_after} s",
            retry_after,
        )
    return SubmissionRefused(
        limit,
        f"too many unfinished jobs: at most {_jobs(limits.max_unfinished)} of one user may "
        "be waiting or running at once (PROV_MAX_UNFINISHED_PER_USER); try again when some "
        "have finished",
        UNFINISHED_RETRY_AFTER_S,
    )
