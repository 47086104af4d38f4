"""The forwarder's settings: the target URL, the secret file, filters, and the group name.

Each reader fails with `WebhookConfigError`, a sentence the CLI prints as is. Nothing here
ever puts the secret into an error message or a log line.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from core.errors import ProvisionError
from core.keys import is_valid_integration_group
from statemachine.integrations.consumer import EventFilter
from statemachine.integrations.webhook.policy import RetryPolicy

DEFAULT_GROUP: Final = "webhook"
DEFAULT_CONSUMER: Final = "forwarder"
# A secret is a line of text; a huge file is a mistake (a wrong path), not a secret.
_MAX_SECRET_BYTES: Final = 4096
_FILTER_KEYS: Final = {"app": "app_ids", "state": "states", "trigger": "triggers"}


class WebhookConfigError(ProvisionError):
    """A forwarder option cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class ForwarderOptions:
    """Everything one forwarder process runs with (the secret is held, never shown)."""

    url: str
    group: str = DEFAULT_GROUP
    consumer: str = DEFAULT_CONSUMER
    secret: bytes | None = field(default=None, repr=False)
    filters: EventFilter = field(default_factory=EventFilter)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 10.0
    concurrency: int = 4
    max_in_flight: int = 256
    claim_idle_ms: int = 60_000
    block_ms: int = 5000
    start_from_history: bool = False


def check_group(group: str) -> str:
    """`group` if it can name a consumer group and its keys."""
    if not is_valid_integration_group(group):
        raise WebhookConfigError(
            f"invalid group name {group!r}: 1 to 63 of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return group


def check_url(url: str) -> str:
    """`url` if it is an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookConfigError(f"--url must be an absolute http:// or https:// URL, not {url!r}")
    return url


def redact_url(url: str) -> str:
    """`url` without user:password@ or a `password=` query value, for logs and messages.

    A receiver may take credentials in its URL, and a Redis URL may carry a password either
    way (`redis://:pw@host`, `unix:///path?password=pw`).
    """
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = f"***@{host}" if at and userinfo else parts.netloc
    query = "&".join(
        f"{name}=***" if sep and name.lower() == "password" else f"{name}{sep}{value}"
        for name, sep, value in (pair.partition("=") for pair in parts.query.split("&"))
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # Put together by hand: urlunsplit drops the "//" of an empty host (unix:///path).
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


def parse_filters(specs: Iterable[str]) -> EventFilter:
    """`app=web`, `state=failed`, `trigger=succeed,fail`: one key per option, values OR-ed.

    Repeating a key adds values (`--filter trigger=succeed --filter trigger=fail`); different
    keys must all match.
    """
    chosen: dict[str, set[str]] = {name: set() for name in _FILTER_KEYS.values()}
    for spec in specs:
        key, sep, values = spec.partition("=")
        name = _FILTER_KEYS.get(key.strip())
        parsed = {value.strip() for value in values.split(",") if value.strip()}
        if not sep or name is None or not parsed:
            raise WebhookConfigError(
                f"bad --filter {spec!r}: expected app=ID, state=STATE or trigger=TRIGGER "
                "(several values separated by commas)"
            )
        chosen[name] |= parsed
    return EventFilter(
        app_ids=frozenset(chosen["app_ids"]),
        states=frozenset(chosen["states"]),
        triggers=frozenset(chosen["triggers"]),
    )


def read_secret_file(path: Path) -> bytes:
    """The secret in `path`, surrounding whitespace stripped.

    Refused: a file others may read or write (mode bits for "other"), one that is not a
    regular file, or one with nothing in it.
    """
    try:
        info = path.stat()
    except OSError as error:
        raise WebhookConfigError(f"cannot read the secret file {path}: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise WebhookConfigError(f"the secret file {path} is not a regular file")
    if info.st_mode & 0o007:
        raise WebhookConfigError(
            f"the secret file {path} is readable or writable by everyone "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
        )
    if info.st_size > _MAX_SECRET_BYTES:
        raise WebhookConfigError(f"the secret file {path} is larger than {_MAX_SECRET_BYTES} bytes")
    try:
        secret = path.read_bytes().strip()
    except OSError as error:
        raise WebhookConfigError(f"cannot read the secret file {path}: {error.strerror}") from None
    if not secret:
        raise WebhookConfigError(f"the secret file {path} is empty")
    return secret
