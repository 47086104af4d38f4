"""Retry policy of a job (docs/architecture.md §2, §6): how often and how long to wait between
attempts.

`decide` is a pure function from (policy, attempt number, outcome) to a decision; the agent
only carries it out, recording a due time in Redis for a `Retry` rather than sleeping.

    outcome                      decision
    ---------------------------  -----------------------------------------------------------
    Exited(0)                    Succeed  (the agent then runs the manifest's verify)
    VerifyFailed                 Fail(verify_failed)
    Exited(1)                    Fail(validation_error)
    Exited(2)                    Retry(delay_for(policy, attempt)) while attempt <= max_retries,
                                 else Fail(install_error)
    Exited(3)                    Fail(config_error)
    Exited(other)                Fail(unknown_exit)
    Signalled / Exited(<0)       Fail(killed)
    TimedOut                     Fail(timeout)
    Cancelled                    Fail(cancelled)
    AgentLost                    Retry(..., agent_lost) if idempotent and retries are left,
                                 else Fail(agent_lost)

`attempt` is the number of the run that just ended (1 for the first). With the defaults a
script that keeps exiting 2 runs four times, waiting 10, 20 and 40 s in between, and then
fails with `install_error`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.reasons import Reason

# A guard, not a policy: a manifest with a huge max_retries and factor must not produce a
# due time that overflows a float or lies years ahead. A week is far beyond any sane wait.
MAX_DELAY_S = 7 * 86400.0

EXIT_SUCCESS = 0
EXIT_VALIDATION_ERROR = 1
EXIT_INSTALL_ERROR = 2
EXIT_CONFIG_ERROR = 3


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: wait base_delay_s * factor**n before retry n+1, at most max_retries."""

    max_retries: int = 3
    base_delay_s: float = 10.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        # bool is an int; `max_retries: true` in a manifest is a mistake, not "one retry".
        if type(self.max_retries) is not int or self.max_retries < 0:
            raise ValueError(f"max_retries must be a whole number >= 0, got {self.max_retries!r}")
        if not (math.isfinite(self.base_delay_s) and self.base_delay_s >= 0):
            raise ValueError(
                f"base_delay_s must be a finite number >= 0, got {self.base_delay_s!r}"
            )
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise ValueError(f"factor must be a finite number > 0, got {self.factor!r}")


def delay_for(policy: RetryPolicy, retry_number: int) -> float:
    """Seconds to wait before retry `retry_number` (1-based): base * factor**(n-1), capped."""
    if retry_number < 1:
        raise ValueError(f"retry numbers start at 1, got {retry_number}")
    try:
        delay = policy.base_delay_s * policy.factor ** (retry_number - 1)
    except OverflowError:
        return MAX_DELAY_S
    return min(delay, MAX_DELAY_S)


# --- outcomes: how a run ended ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exited:
    """The script exited by itself with `code` (a negative code means a signal, as asyncio)."""

    code: int


@dataclass(frozen=True, slots=True)
class Signalled:
    """The script died of signal `signal` without the agent asking."""

    signal: int


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The script ran past the manifest's timeout and was killed."""


@dataclass(frozen=True, slots=True)
class AgentLost:
    """The agent running the script died; another agent found the job still `running`."""


@dataclass(frozen=True, slots=True)
class VerifyFailed:
    """The script exited 0 but the manifest's `verify` command did not pass."""


@dataclass(frozen=True, slots=True)
class Cancelled:
    """An operator cancelled the job and the agent killed the script."""


Outcome = Exited | Signalled | TimedOut | AgentLost | VerifyFailed | Cancelled


# --- decisions: what the agent does next -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Succeed:
    """Move the job to `succeeded`."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Move the job to `retry_wait`, due `delay_s` seconds from now; `reason` says why."""

    delay_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class Fail:
    """Move the job to `failed` with a docs/architecture.md §5 reason code."""

    reason: str


Decision = Succeed | Retry | Fail


def retries_left(policy: RetryPolicy, attempt: int) -> bool:
    """Whether run number `attempt` may still be followed by another run."""
    return attempt <= policy.max_retries


def decide(
    policy: RetryPolicy, attempt: int, outcome: Outcome, *, idempotent: bool = True
) -> Decision:
    """What to do after run number `attempt` ended with `outcome` (see the module table)."""
    if attempt < 1:
        raise ValueError(f"attempts start at 1, got {attempt}")
    match outcome:
        case Exited(code=code) if code < 0:
            # asyncio reports death by signal N as returncode -N.
            return Fail(Reason.KILLED)
        case Exited(code=0):
            return Succeed()
        case Exited(code=1):
            return Fail(Reason.VALIDATION_ERROR)
        case Exited(code=2):
            if retries_left(policy, attempt):
                return Retry(delay_for(policy, attempt), Reason.INSTALL_ERROR)
            return Fail(Reason.INSTALL_ERROR)
        case Exited(code=3):
            return Fail(Reason.CONFIG_ERROR)
        case Exited():
            return Fail(Reason.UNKNOWN_EXIT)
        case Signalled():
            return Fail(Reason.KILLED)
        case TimedOut():
            return Fail(Reason.TIMEOUT)
        case Cancelled():
            return Fail(Reason.CANCELLED)
        case VerifyFailed():
            return Fail(Reason.VERIFY_FAILED)
        case AgentLost():
            # Running a non-idempotent installer twice could do harm (a second database,
            # a doubled config line), so only an idempotent one is run again.
            if idempotent and retries_left(policy, attempt):
                return Retry(delay_for(policy, attempt), Reason.AGENT_LOST)
            return Fail(Reason.AGENT_LOST)
