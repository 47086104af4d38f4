"""Every Redis key name of docs/architecture.md §4, in one place, under a configurable namespace."""

from __future__ import annotations

import re
from dataclasses import dataclass

AGENTS_GROUP = "agents"
DEFAULT_NAMESPACE = "prov"

# A target names a host's job stream, so it must be safe inside a key name, and must not be
# "index", which would collide with `prov:jobs:index`.
TARGET_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_RESERVED_TARGETS = frozenset({"index"})


def is_valid_target(target: str) -> bool:
    """True when `target` can name a job stream: a short lower-case host label."""
    return bool(TARGET_PATTERN.fullmatch(target)) and target not in _RESERVED_TARGETS


# An integration's consumer group names its own keys (dead letters, redrive), so it must be
# safe inside a key name: no ':' (which would let one group's keys alias another's), no spaces.
INTEGRATION_GROUP_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def is_valid_integration_group(group: str) -> bool:
    """True when `group` can name an integration's consumer group and its keys."""
    return bool(INTEGRATION_GROUP_PATTERN.fullmatch(group))


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Key names for one namespace (default `prov`)."""

    namespace: str = DEFAULT_NAMESPACE

    def jobs_stream(self, target: str) -> str:
        """Stream of signed envelopes waiting for the agents of host `target`."""
        return f"{self.namespace}:jobs:{target}"

    @property
    def events(self) -> str:
        """Global stream of every event of every job: the audit log."""
        return f"{self.namespace}:events"

    def job(self, job_id: str) -> str:
        """Hash holding a job's current snapshot."""
        return f"{self.namespace}:job:{job_id}"

    def job_events(self, job_id: str) -> str:
        """Stream of one job's events."""
        return f"{self.namespace}:job:{job_id}:events"

    def job_log(self, job_id: str) -> str:
        """Stream of one job's (redacted, capped) output lines."""
        return f"{self.namespace}:job:{job_id}:log"

    @property
    def jobs_index(self) -> str:
        """Sorted set of job ids by submit time."""
        return f"{self.namespace}:jobs:index"

    @property
    def retry(self) -> str:
        """Sorted set of job ids in retry_wait, scored by due time (epoch ms)."""
        return f"{self.namespace}:retry"

    @property
    def agents(self) -> str:
        """Hash of agent id -> heartbeat JSON."""
        return f"{self.namespace}:agents"

    @property
    def dead(self) -> str:
        """Stream of entries that could not be parsed into a job, with the reason."""
        return f"{self.namespace}:dead"

    @property
    def audit_archives(self) -> str:
        """Hash of archive id -> the signed record of one `provision audit archive` run."""
        return f"{self.namespace}:audit:archives"

    # --- access control (not in docs/architecture.md §4's table, which predates it)
    # ----------------------

    @property
    def users(self) -> str:
        """Set of user names."""
        return f"{self.namespace}:users"

    def user(self, name: str) -> str:
        """Hash of one user: role, argon2 password hash, timestamps."""
        return f"{self.namespace}:user:{name}"

    @property
    def tokens(self) -> str:
        """Set of the hashes of every API token."""
        return f"{self.namespace}:tokens"

    def token(self, token_hash: str) -> str:
        """Hash of one API token, keyed by the SHA-256 of the token (never the token)."""
        return f"{self.namespace}:token:{token_hash}"

    def session(self, session_hash: str) -> str:
        """Hash of one browser session, keyed by the SHA-256 of its cookie value."""
        return f"{self.namespace}:session:{session_hash}"

    def unfinished(self, user: str) -> str:
        """Set of the ids of one user's jobs not yet terminal (the per-user cap counts it)."""
        return f"{self.namespace}:unfinished:{user}"

    def rate(self, kind: str, subject: str, window: int) -> str:
        """Counter of one rate limit window (e.g. failed logins of one account)."""
        return f"{self.namespace}:rate:{kind}:{subject}:{window}"

    # --- integrations (issue 7; not in docs/architecture.md §4's table, which predates them)
    # -------------

    def integration_dead(self, group: str) -> str:
        """Stream of the events an integration group gave up on (its dead letters)."""
        return f"{self.namespace}:integrations:{_checked_group(group)}:dead"

    def integration_redrive(self, group: str) -> str:
        """Stream of dead letters sent back to an integration group's forwarder."""
        return f"{self.namespace}:integrations:{_checked_group(group)}:redrive"


def _checked_group(group: str) -> str:
    if not is_valid_integration_group(group):
        raise ValueError(f"invalid integration group name {group!r}")
    return group
