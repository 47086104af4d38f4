"""Every reason code of docs/architecture.md §5, in one place.

A failed job, and every `prov:dead` entry, carries exactly one of these. They are a
`StrEnum`, so a member compares equal to (and serialises as) its plain string: events, the
snapshot hash and the API can store `Reason.EXPIRED` and read back `"expired"`.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a job failed, or why a stream entry went to the dead-letter stream."""

    # Layer 1: signature, key id, expiry, replay.
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    MALFORMED = "malformed"
    UNKNOWN_JOB = "unknown_job"
    # Layers 2 to 4: whitelist, inputs and fingerprint, script path.
    NOT_WHITELISTED = "not_whitelisted"
    FINGERPRINT_MISMATCH = "fingerprint_mismatch"
    INVALID_INPUTS = "invalid_inputs"
    UNSAFE_PATH = "unsafe_path"
    # How the script ended (docs/architecture.md §6 exit codes).
    VALIDATION_ERROR = "validation_error"
    INSTALL_ERROR = "install_error"
    CONFIG_ERROR = "config_error"
    UNKNOWN_EXIT = "unknown_exit"
    KILLED = "killed"
    TIMEOUT = "timeout"
    VERIFY_FAILED = "verify_failed"
    # Ends decided around the script rather than by it.
    CANCELLED = "cancelled"
    AGENT_LOST = "agent_lost"
    POISON = "poison"
