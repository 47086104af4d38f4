"""`provision users|tokens`: manage who may use the panel, from the machine it runs on
(docs/architecture.md §7).

These commands talk to Redis directly, not to the panel: whoever can reach the panel's Redis
is its administrator already, and the first admin must be made before anyone can log in.
Where: `PROV_REDIS_URL`, else the Unix socket `provision up` leaves in `PROV_DATA_DIR`; which
panel: `PROV_NAMESPACE`.

A password is read from standard input when that is not a terminal (one line, its newline
removed), so `printf '%s\\n' "$pw" | provision users add ann --role viewer` works; on a
terminal it is asked for twice, hidden. It never appears in argv, the environment or output.

Exit codes:

    0    done
    1    refused: a weak password, a taken or unknown name, no such token
    2    bad usage: options, arguments, a malformed PROV_* setting or --expires
    3    Redis could not be reached, or refused the command (e.g. a wrong password)

Standard output carries only the result (a table, JSON, the new token), so it can be
captured; messages and errors go to standard error.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit, urlunsplit

import click
import redis

from core.errors import SettingsError
from core.keys import RedisKeys
from core.runtime.redis_conn import connect
from core.runtime.settings import CommonSettings, redis_url_or_local
from panel.auth.access import Role
from panel.auth.tokens import TokenInfo, TokenStore
from panel.auth.users import (
    StoredUser,
    UserError,
    UserStore,
    check_password_rules,
    is_valid_user_name,
)

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_REDIS: Final = 3

# A CLI run by a person should say "cannot reach Redis" in seconds, not hang for long.
CONNECT_TIMEOUT_S: Final = 5.0

ROLE_NAMES: Final = tuple(role.value for role in Role)
_DURATION: Final = re.compile(r"([1-9][0-9]{0,5})([dhm])")
_UNIT_MS: Final = {"d": 86_400_000, "h": 3_600_000, "m": 60_000}
_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


# -- pure pieces ---------------------------------------------------------------------------


def expiry_ms(text: str, *, now_ms: int) -> int:
    """When a token given `--expires text` at `now_ms` expires, in epoch milliseconds.

    `text` is a duration from now (`30d`, `12h`, `90m`) or a date `YYYY-MM-DD`, meaning
    midnight UTC at its start. ValueError, for a person, when it is neither or is past.
    """
    text = text.strip()
    if duration := _DURATION.fullmatch(text):
        return now_ms + int(duration.group(1)) * _UNIT_MS[duration.group(2)]
    if _DATE.fullmatch(text):
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a real date") from None
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        expires = int(midnight.timestamp() * 1000)
        if expires <= now_ms:
            raise ValueError(f"{text} (midnight UTC) is already past")
        return expires
    raise ValueError(f"{text!r} is neither a duration like 30d, 12h or 90m nor a YYYY-MM-DD date")


def password_from_line(line: str) -> str:
    """The password on one line of input: the line without its line ending."""
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def without_credentials(url: str) -> str:
    """`url` fit to print: any user name and password in it replaced by `***`."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def epoch_ms_text(epoch_ms: int | None) -> str:
    """Epoch milliseconds as a local time, or "-" when absent."""
    if not epoch_ms:
        return "-"
    return datetime.fromtimestamp(epoch_ms / 1000).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def user_json(user: StoredUser) -> dict[str, Any]:
    """A user as `users list --json` shows it (times in epoch milliseconds)."""
    return {"name": user.name, "role": user.role.value, "created_at": user.created_at}


def token_json(info: TokenInfo) -> dict[str, Any]:
    """A token's description as `tokens list --json` shows it (never the token)."""
    return {
        "token_id": info.token_id,
        "user": info.user,
        "name": info.name,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "last_used_at": info.last_used_at,
    }


# -- running a command ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stores:
    """The stores one command works with, on one connection."""

    users: UserStore
    tokens: TokenStore


def _die(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def _run(work: Callable[[Stores], Coroutine[Any, Any, None]]) -> None:
    """Connect to the configured Redis, run one command's coroutine, close; errors exit."""
    try:
        # An entry point: the one place that reads os.environ (STYLE: settings).
        settings = CommonSettings.from_env(os.environ)
    except SettingsError as error:
        _die(str(error), EXIT_USAGE)
    try:
        url = redis_url_or_local(settings)
    except SettingsError as error:
        _die(str(error), EXIT_REDIS)
    keys = RedisKeys(settings.namespace)

    async def main() -> None:
        client = await connect(url, socket_timeout_s=CONNECT_TIMEOUT_S)
        try:
            await work(Stores(UserStore(client, keys), TokenStore(client, keys)))
        finally:
            await client.aclose()

    try:
        asyncio.run(main())
    except UserError as error:
        _die(str(error), EXIT_REFUSED)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        _die(f"cannot reach Redis at {without_credentials(url)}: {error}", EXIT_REDIS)
    except redis.RedisError as error:
        _die(f"Redis refused the command: {error}", EXIT_REDIS)


def _read_password() -> str:
    """A new password: one line of standard input, or asked twice on a terminal."""
    if sys.stdin.isatty():
        answer: str = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
        return answer
    line = sys.stdin.readline()
    if not line:
        _die("no password on standard input (give one line)", EXIT_REFUSED)
    return password_from_line(line)


def _new_password() -> str:
    """A password that passes the rules, checked before Redis is touched."""
    password = _read_password()
    try:
        check_password_rules(password)
    except UserError as error:
        _die(str(error), EXIT_REFUSED)
    return password


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2))


# -- provision users -----------------------------------------------------------------------


@click.group("users")
def users() -> None:
    """Manage the panel's users (talks to Redis directly)."""


@users.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(ROLE_NAMES),
    required=True,
    help="viewer reads; operator also submits and cancels; admin also manages access.",
)
def users_add(name: str, role: str) -> None:
    """Add user NAME with a role.

    The password is one line of standard input, or, on a terminal, asked for twice.
    """
    if not is_valid_user_name(name):
        _die("a user name is 1-64 lower-case letters, digits, or _ . @ -", EXIT_REFUSED)
    password = _new_password()

    async def work(stores: Stores) -> None:
        await stores.users.add(name, Role(role), password)

    _run(work)
    click.echo(f"added user {name} ({role})")


@users.command("passwd")
@click.argument("name")
def users_passwd(name: str) -> None:
    """Set the password of user NAME.

    The password is one line of standard input, or, on a terminal, asked for twice.
    """
    password = _new_password()

    async def work(stores: Stores) -> None:
        await stores.users.set_password(name, password)

    _run(work)
    click.echo(f"changed the password of user {name}")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def users_list(as_json: bool) -> None:
    """List every user: name, role, when created."""
    found: list[StoredUser] = []

    async def work(stores: Stores) -> None:
        found.extend(await stores.users.all())

    _run(work)
    if as_json:
        _print_json({"users": [user_json(user) for user in found]})
        return
    rows = [(user.name, user.role.value, epoch_ms_text(user.created_at)) for user in found]
    _table(("NAME", "ROLE", "CREATED"), rows)


@users.command("remove")
@click.argument("name")
def users_remove(name: str) -> None:
    """Remove user NAME and revoke every API token of theirs."""
    outcome: list[int] = []

    async def work(stores: Stores) -> None:
        removed = await stores.users.remove(name)
        # Revoked even when the user was already gone: stray tokens of a name must not
        # come back to life if the name is given to someone else later.
        revoked = await stores.tokens.revoke_user(name)
        if not removed:
            raise UserError(f"no user {name!r}")
        outcome.append(revoked)

    _run(work)
    click.echo(f"removed user {name} and revoked {outcome[0]} token(s)")


@users.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(ROLE_NAMES))
def users_role(name: str, role: str) -> None:
    """Change the role of user NAME to ROLE.

    Their API tokens carry the new role at once.
    """

    async def work(stores: Stores) -> None:
        await stores.users.set_role(name, Role(role))

    _run(work)
    click.echo(f"user {name} is now {role}")


# -- provision tokens ----------------------------------------------------------------------


@click.group("tokens")
def tokens() -> None:
    """Manage API tokens for scripts (talks to Redis directly)."""


@tokens.command("create")
@click.argument("user")
@click.option("--name", default="", help="What the token is for (shown by `tokens list`).")
@click.option(
    "--expires",
    metavar="WHEN",
    default=None,
    help="A duration from now (30d, 12h, 90m) or a date YYYY-MM-DD (midnight UTC). Default: never.",
)
def tokens_create(user: str, name: str, expires: str | None) -> None:
    """Create an API token for USER and print it alone on one line (it is shown only once)."""
    expires_at: int | None = None
    if expires is not None:
        try:
            expires_at = expiry_ms(expires, now_ms=int(time.time() * 1000))
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="'--expires'") from None
    created: list[tuple[str, TokenInfo]] = []

    async def work(stores: Stores) -> None:
        if await stores.users.get(user) is None:
            raise UserError(f"no user {user!r}: add them first with `provision users add`")
        created.append(await stores.tokens.create(user, name=name, expires_at_ms=expires_at))

    _run(work)
    token, info = created[0]
    click.echo(token)
    until = f", expires {epoch_ms_text(info.expires_at)}" if info.expires_at else ""
    click.echo(
        f"created token {info.token_id} for {user}{until}; it is shown only once, keep it now",
        err=True,
    )


@tokens.command("list")
@click.option("--user", default=None, help="Only the tokens of this user.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tokens_list(user: str | None, as_json: bool) -> None:
    """List API tokens (never the tokens themselves), oldest first."""
    found: list[TokenInfo] = []

    async def work(stores: Stores) -> None:
        found.extend(await stores.tokens.all(user))

    _run(work)
    if as_json:
        _print_json({"tokens": [token_json(info) for info in found]})
        return
    rows = [
        (
            info.token_id,
            info.user,
            info.name or "-",
            epoch_ms_text(info.created_at),
            epoch_ms_text(info.expires_at) if info.expires_at else "never",
            epoch_ms_text(info.last_used_at),
        )
        for info in found
    ]
    _table(("ID", "USER", "NAME", "CREATED", "EXPIRES", "LAST USED"), rows)


@tokens.command("revoke")
@click.argument("token_id")
def tokens_revoke(token_id: str) -> None:
    """Revoke the API token whose id (from `tokens list`) is TOKEN_ID."""
    token_id = token_id.strip().lower()

    async def work(stores: Stores) -> None:
        # The store revokes every token whose id starts with what it is given; a short
        # prefix matching several is refused here rather than revoking more than meant.
        found = await stores.tokens.all()
        matching = [info for info in found if token_id and info.token_id.startswith(token_id)]
        if len(matching) > 1:
            raise UserError(f"{token_id!r} matches {len(matching)} tokens; give the whole id")
        if not matching or await stores.tokens.revoke(token_id) == 0:
            raise UserError(f"no token with id {token_id!r} (see `provision tokens list`)")

    _run(work)
    click.echo(f"revoked token {token_id}")
