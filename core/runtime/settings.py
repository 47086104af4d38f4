"""Settings: one frozen dataclass per process kind, built from `PROV_*` variables.

`os.environ` is read only by entry points, which pass it to `from_env`. Every value is cast
explicitly and a bad one raises `SettingsError` naming the variable. Durations carry their
unit in the name.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from core.errors import SettingsError
from core.keys import DEFAULT_NAMESPACE
from core.runtime.redis_launcher import configured_socket

FsyncPolicy = Literal["everysec", "always"]

_NAMESPACE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")


# The catalogue that ships with the program: `installers/` beside the packages, which is the
# repo's own folder in a clone and the copy the wheel carries in an installed package.
BUNDLED_INSTALLERS_DIR = Path(__file__).resolve().parents[2] / "installers"


def default_installers_dir(cwd: Path | None = None) -> Path:
    """The apps used when PROV_INSTALLERS_DIR is unset: `./installers` if it exists, else the
    bundled catalogue, so an install runs anywhere and a folder of one's own wins."""
    here = (cwd or Path.cwd()) / "installers"
    return here.resolve() if here.is_dir() else BUNDLED_INSTALLERS_DIR


# One allowed `Host`: the name (lower case, IPv6 without brackets, IPs in canonical form) and
# the port, None when the entry names none.
HostEntry = tuple[str, int | None]

_HOST_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


def normalise_host_name(name: str) -> str | None:
    """The comparable form of a host name or IP (None when it is neither): lower case, one
    trailing dot dropped, IP addresses in canonical form (`[0::1]` and `::1` alike)."""
    name = name.lower().removesuffix(".")
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        pass
    if not name or not name.isascii() or not set(name) <= _HOST_NAME_CHARS:
        return None
    return name


def parse_host(text: str) -> HostEntry | None:
    """`host`, `host:port`, `[v6]` or `[v6]:port` (a `Host` header's shape), or None when it is
    none of them; an IPv6 address must be in brackets."""
    text = text.strip()
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or ":" not in inside:
            return None
        name, port_text = inside, rest
        if port_text and not port_text.startswith(":"):
            return None
        port_text = port_text[1:] if port_text else ""
        has_port = bool(rest)
    else:
        if text.count(":") > 1:
            return None  # an IPv6 address without brackets
        name, colon, port_text = text.partition(":")
        has_port = bool(colon)
    normalised = normalise_host_name(name)
    if normalised is None:
        return None
    if not has_port:
        return normalised, None
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        return None
    return normalised, int(port_text)


class _Env:
    """Typed reads of one environment mapping, each failing with the variable's name."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str, default: str) -> str:
        value = self._environ.get(name, "").strip()
        return value or default

    def optional(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        if not (raw.isascii() and raw.isdigit()):
            raise SettingsError(name, f"expected a whole number, got {raw!r}")
        value = int(raw)
        if not minimum <= value <= maximum:
            raise SettingsError(name, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(name, f"expected a number, got {raw!r}") from None
        if not minimum <= value <= maximum:  # also refuses NaN
            raise SettingsError(name, f"must be between {minimum} and {maximum}, got {raw}")
        return value

    def path(self, name: str, default: Path) -> Path:
        raw = self._environ.get(name, "").strip()
        return Path(raw).expanduser() if raw else default

    def listen_address(self, name: str) -> tuple[str, int] | None:
        """`host:port` (`[v6]:port` for IPv6) to listen on; unset, empty or `off` is None."""
        raw = self.text(name, "off")
        if raw == "off":
            return None
        host, colon, port = raw.rpartition(":")
        host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
        if not colon or not host or not (port.isascii() and port.isdigit()):
            raise SettingsError(name, f"expected host:port or off, got {raw!r}")
        if not 1 <= int(port) <= 65535:
            raise SettingsError(name, f"port must be between 1 and 65535, got {port}")
        return host, int(port)

    def host_list(self, name: str) -> tuple[HostEntry, ...] | None:
        """Comma-separated `host` or `host:port` entries (`[v6]` or `[v6]:port` for IPv6);
        unset or empty is None (the caller's default)."""
        raw = self._environ.get(name, "").strip()
        if not raw:
            return None
        entries = []
        for item in raw.split(","):
            if not item.strip():
                continue
            entry = parse_host(item.strip())
            if entry is None:
                raise SettingsError(
                    name, f"expected host or host:port ([v6] or [v6]:port), got {item.strip()!r}"
                )
            entries.append(entry)
        if not entries:
            raise SettingsError(name, "names no host")
        return tuple(entries)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise SettingsError(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value


@dataclass(frozen=True, slots=True)
class CommonSettings:
    """What every process reads: where Redis is, the namespace, the keys and the apps."""

    namespace: str
    redis_url: str | None
    redis_fsync: FsyncPolicy
    data_dir: Path
    installers_dir: Path
    hmac_keys_file: Path | None
    job_ttl_s: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CommonSettings:
        """Read the shared `PROV_*` variables."""
        env = _Env(environ)
        namespace = env.text("PROV_NAMESPACE", DEFAULT_NAMESPACE)
        if not set(namespace) <= _NAMESPACE_CHARS:
            raise SettingsError(
                "PROV_NAMESPACE", "only lower-case letters, digits, '_', '-' and '.'"
            )
        fsync = env.choice("PROV_REDIS_FSYNC", "everysec", ("everysec", "always"))
        return cls(
            namespace=namespace,
            redis_url=env.optional("PROV_REDIS_URL"),
            redis_fsync="always" if fsync == "always" else "everysec",
            data_dir=env.path("PROV_DATA_DIR", Path(".provision")),
            installers_dir=env.path("PROV_INSTALLERS_DIR", default_installers_dir()),
            hmac_keys_file=(
                Path(raw) if (raw := env.optional("PROV_HMAC_KEYS_FILE")) is not None else None
            ),
            job_ttl_s=env.integer("PROV_JOB_TTL_S", 3600, minimum=10, maximum=30 * 86400),
        )


# The folder of the data folder where `provision up` keeps its Redis.
LOCAL_REDIS_FOLDER = "redis"


def redis_url_or_local(common: CommonSettings) -> str:
    """PROV_REDIS_URL, else the socket `provision up` leaves in the data folder.

    SettingsError when neither exists, saying how to point at a Redis.
    """
    if common.redis_url:
        return common.redis_url
    socket_path = configured_socket((common.data_dir / LOCAL_REDIS_FOLDER).resolve())
    if socket_path is None:
        raise SettingsError(
            "PROV_REDIS_URL",
            f"not set, and no local Redis runs in {common.data_dir} "
            "(set it, e.g. redis://127.0.0.1:6379/0)",
        )
    return "unix://" + quote(str(socket_path))


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Settings of `provision agent` (docs/architecture.md §8)."""

    common: CommonSettings
    agent_id: str
    target: str
    concurrency: int
    # Where `/metrics` listens (no auth: keep it on loopback or behind a proxy); None is off.
    metrics_addr: tuple[str, int] | None
    lease_s: float
    max_deliveries: int
    kill_grace_s: float
    shutdown_grace_s: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AgentSettings:
        """Read the agent's `PROV_*` variables."""
        env = _Env(environ)
        return cls(
            common=CommonSettings.from_env(environ),
            agent_id=env.text("PROV_AGENT_ID", f"{socket.gethostname()}-{os.getpid()}"),
            target=env.text("PROV_TARGET", "local"),
            concurrency=env.integer("PROV_AGENT_CONCURRENCY", 1, minimum=1, maximum=256),
            metrics_addr=env.listen_address("PROV_AGENT_METRICS_ADDR"),
            lease_s=env.number("PROV_LEASE_S", 30.0, minimum=1.0, maximum=86400.0),
            max_deliveries=env.integer("PROV_MAX_DELIVERIES", 5, minimum=1, maximum=1000),
            kill_grace_s=env.number("PROV_KILL_GRACE_S", 10.0, minimum=0.0, maximum=3600.0),
            shutdown_grace_s=env.number(
                "PROV_SHUTDOWN_GRACE_S", 30.0, minimum=0.0, maximum=86400.0
            ),
        )


@dataclass(frozen=True, slots=True)
class PanelSettings:
    """Settings of `provision panel`."""

    common: CommonSettings
    host: str
    port: int
    target: str
    session_idle_s: int
    session_max_s: int
    cookie_secure: bool
    login_failures_per_account: int
    login_failures_per_address: int
    login_window_s: int
    submissions_per_minute: int
    max_unfinished_per_user: int
    # PROV_PANEL_ALLOWED_HOSTS: the `Host`s the panel answers to; None is the default (the
    # bind address and the loopback names: panel/web/hosts.py).
    allowed_hosts: tuple[HostEntry, ...] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PanelSettings:
        """Read the panel's `PROV_*` variables."""
        env = _Env(environ)
        return cls(
            common=CommonSettings.from_env(environ),
            host=env.text("PROV_PANEL_HOST", "127.0.0.1"),
            port=env.integer("PROV_PANEL_PORT", 8080, minimum=1, maximum=65535),
            target=env.text("PROV_TARGET", "local"),
            session_idle_s=env.integer("PROV_SESSION_IDLE_S", 1800, minimum=60, maximum=86400),
            session_max_s=env.integer(
                "PROV_SESSION_MAX_S", 12 * 3600, minimum=300, maximum=30 * 86400
            ),
            cookie_secure=env.choice("PROV_COOKIE_SECURE", "false", ("true", "false")) == "true",
            login_failures_per_account=env.integer(
                "PROV_LOGIN_FAILURES_PER_ACCOUNT", 5, minimum=1, maximum=1000
            ),
            login_failures_per_address=env.integer(
                "PROV_LOGIN_FAILURES_PER_ADDRESS", 20, minimum=1, maximum=10000
            ),
            login_window_s=env.integer("PROV_LOGIN_WINDOW_S", 900, minimum=10, maximum=86400),
            # Accepted jobs only; high enough for a CI script queueing a fleet's jobs.
            submissions_per_minute=env.integer(
                "PROV_SUBMISSIONS_PER_MINUTE", 600, minimum=1, maximum=1_000_000
            ),
            max_unfinished_per_user=env.integer(
                "PROV_MAX_UNFINISHED_PER_USER", 1000, minimum=1, maximum=1_000_000
            ),
            allowed_hosts=env.host_list("PROV_PANEL_ALLOWED_HOSTS"),
        )


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Settings of the client commands that talk to the panel's HTTP API."""

    panel_url: str
    token: str | None
    data_dir: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ClientSettings:
        """Read the client's `PROV_*` variables."""
        env = _Env(environ)
        return cls(
            panel_url=env.text("PROV_PANEL_URL", "http://127.0.0.1:8080").rstrip("/"),
            token=env.optional("PROV_TOKEN"),
            data_dir=env.path("PROV_DATA_DIR", Path(".provision")),
        )
