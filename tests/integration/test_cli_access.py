"""`provision users|tokens` as an administrator types them, against a real Redis.

Each command runs as a real subprocess (`python -c "from core.cli.root import main; main()"`)
with `PROV_REDIS_URL` and this test's own `PROV_NAMESPACE`; passwords go in on standard
input. Results are checked through `UserStore` and `TokenStore`, as the panel would see them.
The first tests check the pure pieces (expiry parsing, password lines) without a server.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from panel.auth.access import Role
from panel.auth.tokens import TokenStore
from panel.auth.users import UserStore
from panel.cli.access import expiry_ms, password_from_line, without_credentials

PASSWORD = "correct horse battery staple"
OTHER_PASSWORD = "another long enough passphrase"
HOUR_MS = 3_600_000
NOW_MS = 1_700_000_000_000


# -- pure pieces ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "added_ms"),
    [("30d", 30 * 24 * HOUR_MS), ("12h", 12 * HOUR_MS), ("90m", 90 * 60_000), (" 1h ", HOUR_MS)],
)
def test_an_expiry_duration_counts_from_now(text, added_ms):
    assert expiry_ms(text, now_ms=NOW_MS) == NOW_MS + added_ms


def test_an_expiry_date_means_midnight_utc_at_its_start():
    expected = int(datetime(2031, 5, 17, tzinfo=UTC).timestamp() * 1000)
    assert expiry_ms("2031-05-17", now_ms=NOW_MS) == expected


@pytest.mark.parametrize("text", ["", "soon", "0d", "12", "3w", "-1h", "2031-02-30", "2000-01-01"])
def test_an_expiry_that_is_malformed_impossible_or_past_is_refused(text):
    with pytest.raises(ValueError, match=r"."):
        expiry_ms(text, now_ms=NOW_MS)


def test_a_password_line_loses_only_its_line_ending():
    assert password_from_line(" spaced out \n") == " spaced out "
    assert password_from_line("windows\r\n") == "windows"
    assert password_from_line("no newline") == "no newline"


def test_credentials_in_a_redis_url_are_hidden_before_printing():
    shown = without_credentials("redis://user:hunter2@db.example:6379/0")
    assert "hunter2" not in shown and "user" not in shown
    assert shown == "redis://***@db.example:6379/0"
    assert without_credentials("unix:///run/redis.sock") == "unix:///run/redis.sock"


# -- the commands as subprocesses ----------------------------------------------------------


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


Provision = Callable[..., Awaitable[Result]]


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", "from core.cli.root import main; main()", *args]


@pytest.fixture
def cli_env(tmp_path: Path, redis_url: str, namespace: str) -> dict[str, str]:
    """This Redis and namespace, an empty data folder, and no PROV_* from outside."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROV_")}
    env.update(
        {
            "PROV_REDIS_URL": redis_url,
            "PROV_NAMESPACE": namespace,
            "PROV_DATA_DIR": str(tmp_path / "data"),
        }
    )
    return env


@pytest.fixture
def provision(cli_env: dict[str, str], tmp_path: Path) -> Provision:
    async def run(
        *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> Result:
        process = await asyncio.create_subprocess_exec(
            *cli_argv(*args),
            env=env if env is not None else cli_env,
            cwd=tmp_path,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdin_bytes = stdin.encode() if stdin is not None else None
        out, err = await asyncio.wait_for(process.communicate(stdin_bytes), 60)
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())

    return run


@pytest.fixture
def users(redis_client, redis_keys) -> UserStore:
    return UserStore(redis_client, redis_keys)


@pytest.fixture
def tokens(redis_client, redis_keys) -> TokenStore:
    return TokenStore(redis_client, redis_keys)


def now_ms() -> int:
    return int(time.time() * 1000)


async def added(provision: Provision, name: str, role: str = "viewer") -> None:
    result = await provision("users", "add", name, "--role", role, stdin=PASSWORD + "\n")
    assert result.code == 0, result


async def created_token(provision: Provision, user: str, *options: str) -> str:
    result = await provision("tokens", "create", user, *options)
    assert result.code == 0, result
    return result.stdout.strip()


# -- users add -----------------------------------------------------------------------------


@pytest.mark.redis
async def test_users_add_takes_the_password_from_stdin_and_the_user_can_log_in(provision, users):
    result = await provision("users", "add", "ann", "--role", "operator", stdin=PASSWORD + "\n")
    assert result.code == 0, result
    assert result.stdout == "added user ann (operator)\n"
    user = await users.authenticate("ann", PASSWORD)
    assert user is not None and user.role is Role.OPERATOR
    assert await users.authenticate("ann", PASSWORD + "\n") is None
    assert await users.authenticate("ann", OTHER_PASSWORD) is None


@pytest.mark.redis
async def test_users_add_keeps_spaces_and_drops_only_the_newline_of_the_password(provision, users):
    password = "  spaces around it  "
    result = await provision("users", "add", "ann", "--role", "viewer", stdin=password + "\r\n")
    assert result.code == 0, result
    assert await users.authenticate("ann", password) is not None
    assert await users.authenticate("ann", password.strip()) is None


@pytest.mark.redis
async def test_users_add_refuses_a_weak_password_and_creates_no_user(provision, users):
    result = await provision("users", "add", "ann", "--role", "viewer", stdin="short\n")
    assert result.code == 1
    assert "at least 12 characters" in result.stderr
    assert result.stdout == ""
    assert await users.get("ann") is None


@pytest.mark.redis
async def test_users_add_with_empty_stdin_is_refused(provision, users):
    result = await provision("users", "add", "ann", "--role", "viewer", stdin="")
    assert result.code == 1
    assert "no password" in result.stderr
    assert await users.get("ann") is None


@pytest.mark.redis
async def test_users_add_refuses_a_name_already_taken_and_keeps_the_first_password(
    provision, users
):
    await added(provision, "ann", "admin")
    result = await provision("users", "add", "ann", "--role", "viewer", stdin=OTHER_PASSWORD)
    assert result.code == 1
    assert "already exists" in result.stderr
    user = await users.authenticate("ann", PASSWORD)
    assert user is not None and user.role is Role.ADMIN
    assert await users.authenticate("ann", OTHER_PASSWORD) is None


@pytest.mark.redis
async def test_users_add_refuses_an_invalid_name(provision, users):
    result = await provision("users", "add", "Ann Smith", "--role", "viewer", stdin=PASSWORD)
    assert result.code == 1
    assert "user name" in result.stderr
    assert await users.count() == 0


@pytest.mark.redis
async def test_users_add_without_a_known_role_is_a_usage_error(provision, users):
    missing = await provision("users", "add", "ann", stdin=PASSWORD)
    unknown = await provision("users", "add", "ann", "--role", "root", stdin=PASSWORD)
    assert (missing.code, unknown.code) == (2, 2)
    assert await users.count() == 0


@pytest.mark.redis
async def test_users_add_on_a_terminal_asks_twice_with_the_input_hidden(cli_env, tmp_path, users):
    controller, terminal = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            *cli_argv("users", "add", "ann", "--role", "viewer"),
            env=cli_env,
            cwd=tmp_path,
            stdin=terminal,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # No controlling terminal: getpass then reads the pty on stdin, never ours.
            start_new_session=True,
        )
        assert process.stderr is not None and process.stdout is not None
        seen = ""
        for prompt in ("Password: ", "Repeat for confirmation: "):
            while prompt not in seen:
                chunk = await asyncio.wait_for(process.stderr.read(100), 30)
                assert chunk, f"no prompt {prompt!r}; stderr so far: {seen!r}"
                seen += chunk.decode()
            seen = seen.replace(prompt, "", 1)
            os.write(controller, (PASSWORD + "\n").encode())
        out = await asyncio.wait_for(process.stdout.read(), 30)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        os.close(controller)
        os.close(terminal)
    assert out.decode() == "added user ann (viewer)\n"
    assert PASSWORD not in seen
    assert await users.authenticate("ann", PASSWORD) is not None


# -- users list, passwd, role, remove ------------------------------------------------------


@pytest.mark.redis
async def test_users_list_shows_every_user_with_role_and_creation_time(provision):
    before = now_ms()
    await added(provision, "bob", "admin")
    await added(provision, "ann", "viewer")
    table = await provision("users", "list")
    assert table.code == 0, table
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "CREATED"]
    assert [line.split()[:2] for line in lines[1:]] == [["ann", "viewer"], ["bob", "admin"]]
    as_json = await provision("users", "list", "--json")
    assert as_json.code == 0, as_json
    listed = json.loads(as_json.stdout)["users"]
    assert [(user["name"], user["role"]) for user in listed] == [
        ("ann", "viewer"),
        ("bob", "admin"),
    ]
    assert all(before <= user["created_at"] <= now_ms() for user in listed)
    assert PASSWORD not in table.stdout + as_json.stdout
    assert "password" not in as_json.stdout


@pytest.mark.redis
async def test_users_passwd_replaces_the_password(provision, users):
    await added(provision, "ann")
    result = await provision("users", "passwd", "ann", stdin=OTHER_PASSWORD + "\n")
    assert result.code == 0, result
    assert await users.authenticate("ann", PASSWORD) is None
    assert await users.authenticate("ann", OTHER_PASSWORD) is not None


@pytest.mark.redis
async def test_users_passwd_refuses_a_weak_password_and_keeps_the_old_one(provision, users):
    await added(provision, "ann")
    result = await provision("users", "passwd", "ann", stdin="weak\n")
    assert result.code == 1
    assert "at least 12 characters" in result.stderr
    assert await users.authenticate("ann", PASSWORD) is not None


@pytest.mark.redis
async def test_users_passwd_of_an_unknown_user_exits_1(provision, users):
    result = await provision("users", "passwd", "nobody", stdin=PASSWORD + "\n")
    assert result.code == 1
    assert "no user 'nobody'" in result.stderr
    assert await users.get("nobody") is None


@pytest.mark.redis
async def test_users_role_changes_the_role(provision, users):
    await added(provision, "ann", "viewer")
    result = await provision("users", "role", "ann", "admin")
    assert result.code == 0, result
    user = await users.get("ann")
    assert user is not None and user.role is Role.ADMIN


@pytest.mark.redis
async def test_users_role_of_an_unknown_user_exits_1_and_an_unknown_role_exits_2(provision, users):
    await added(provision, "ann", "viewer")
    assert (await provision("users", "role", "nobody", "admin")).code == 1
    assert (await provision("users", "role", "ann", "root")).code == 2
    user = await users.get("ann")
    assert user is not None and user.role is Role.VIEWER
    assert await users.get("nobody") is None


@pytest.mark.redis
async def test_users_remove_deletes_the_user_and_revokes_only_their_tokens(
    provision, users, tokens
):
    await added(provision, "ann")
    await added(provision, "bob")
    anns = [await created_token(provision, "ann"), await created_token(provision, "ann")]
    bobs = await created_token(provision, "bob")
    result = await provision("users", "remove", "ann")
    assert result.code == 0, result
    assert "2 token(s)" in result.stdout
    assert await users.get("ann") is None
    assert [await tokens.authenticate(token, now_ms=now_ms()) for token in anns] == [None, None]
    assert await tokens.all("ann") == []
    assert await tokens.authenticate(bobs, now_ms=now_ms()) is not None
    assert await users.get("bob") is not None


@pytest.mark.redis
async def test_users_remove_of_an_unknown_user_exits_1(provision):
    result = await provision("users", "remove", "nobody")
    assert result.code == 1
    assert "no user 'nobody'" in result.stderr


# -- tokens --------------------------------------------------------------------------------


@pytest.mark.redis
async def test_tokens_create_prints_only_the_token_and_it_authenticates(provision, tokens):
    await added(provision, "ann")
    result = await provision("tokens", "create", "ann", "--name", "deploy script")
    assert result.code == 0, result
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    assert token.startswith("prov_") and " " not in token
    assert "only once" in result.stderr
    assert token not in result.stderr
    info = await tokens.authenticate(token, now_ms=now_ms())
    assert info is not None
    assert (info.user, info.name, info.expires_at) == ("ann", "deploy script", None)


@pytest.mark.redis
async def test_tokens_create_for_an_unknown_user_exits_1_and_creates_no_token(provision, tokens):
    result = await provision("tokens", "create", "nobody")
    assert result.code == 1
    assert result.stdout == ""
    assert "no user 'nobody'" in result.stderr
    assert await tokens.all() == []


@pytest.mark.redis
async def test_tokens_create_with_a_duration_expires_after_it(provision, tokens):
    await added(provision, "ann")
    before = now_ms()
    token = await created_token(provision, "ann", "--expires", "12h")
    after = now_ms()
    [info] = await tokens.all("ann")
    assert info.expires_at is not None
    assert before + 12 * HOUR_MS <= info.expires_at <= after + 12 * HOUR_MS
    assert await tokens.authenticate(token, now_ms=info.expires_at - 1) is not None
    assert await tokens.authenticate(token, now_ms=info.expires_at) is None
    assert await tokens.authenticate(token, now_ms=info.expires_at + HOUR_MS) is None


@pytest.mark.redis
async def test_tokens_create_with_a_date_expires_at_midnight_utc(provision, tokens):
    await added(provision, "ann")
    token = await created_token(provision, "ann", "--expires", "2999-01-01")
    midnight = int(datetime(2999, 1, 1, tzinfo=UTC).timestamp() * 1000)
    [info] = await tokens.all("ann")
    assert info.expires_at == midnight
    assert await tokens.authenticate(token, now_ms=now_ms()) is not None
    assert await tokens.authenticate(token, now_ms=midnight + 1) is None


@pytest.mark.redis
@pytest.mark.parametrize("expires", ["soon", "2000-01-01", "2031-02-30", "0h"])
async def test_tokens_create_refuses_an_expiry_it_cannot_use(provision, tokens, expires):
    await added(provision, "ann")
    result = await provision("tokens", "create", "ann", "--expires", expires)
    assert result.code == 2
    assert result.stdout == ""
    assert "--expires" in result.stderr
    assert await tokens.all() == []


@pytest.mark.redis
async def test_tokens_list_describes_tokens_and_never_shows_one(provision, tokens):
    await added(provision, "ann")
    await added(provision, "bob")
    anns = await created_token(provision, "ann", "--name", "ci", "--expires", "30d")
    bobs = await created_token(provision, "bob")
    assert await tokens.authenticate(anns, now_ms=now_ms()) is not None  # sets last used
    [ann_info] = await tokens.all("ann")
    [bob_info] = await tokens.all("bob")

    table = await provision("tokens", "list")
    as_json = await provision("tokens", "list", "--json")
    only_ann = await provision("tokens", "list", "--user", "ann", "--json")
    for result in (table, as_json, only_ann):
        assert result.code == 0, result
        assert anns not in result.stdout and bobs not in result.stdout
        assert "prov_" not in result.stdout

    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "USER", "NAME", "CREATED", "EXPIRES", "LAST", "USED"]
    assert [line.split()[:3] for line in lines[1:]] == [
        [ann_info.token_id, "ann", "ci"],
        [bob_info.token_id, "bob", "-"],
    ]
    listed = json.loads(as_json.stdout)["tokens"]
    assert [entry["token_id"] for entry in listed] == [ann_info.token_id, bob_info.token_id]
    assert listed[0] == {
        "token_id": ann_info.token_id,
        "user": "ann",
        "name": "ci",
        "created_at": ann_info.created_at,
        "expires_at": ann_info.expires_at,
        "last_used_at": ann_info.last_used_at,
    }
    assert listed[0]["last_used_at"] is not None and listed[1]["last_used_at"] is None
    assert [entry["user"] for entry in json.loads(only_ann.stdout)["tokens"]] == ["ann"]


@pytest.mark.redis
async def test_tokens_revoke_makes_the_token_stop_authenticating(provision, tokens):
    await added(provision, "ann")
    revoked = await created_token(provision, "ann")
    kept = await created_token(provision, "ann")
    info = await tokens.authenticate(revoked, now_ms=now_ms())
    assert info is not None
    result = await provision("tokens", "revoke", info.token_id)
    assert result.code == 0, result
    assert await tokens.authenticate(revoked, now_ms=now_ms()) is None
    assert await tokens.authenticate(kept, now_ms=now_ms()) is not None
    again = await provision("tokens", "revoke", info.token_id)
    assert again.code == 1
    assert "no token" in again.stderr


@pytest.mark.redis
@pytest.mark.parametrize("token_id", ["0123456789ab", "short", "not-hex-at-all"])
async def test_tokens_revoke_of_an_id_that_matches_nothing_exits_1(provision, tokens, token_id):
    await added(provision, "ann")
    token = await created_token(provision, "ann")
    result = await provision("tokens", "revoke", token_id)
    assert result.code == 1
    assert "no token" in result.stderr
    assert await tokens.authenticate(token, now_ms=now_ms()) is not None


# -- where Redis is ------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.redis
@pytest.mark.parametrize(
    "args",
    [("users", "list"), ("tokens", "list"), ("users", "remove", "ann")],
)
async def test_an_unreachable_redis_gives_a_clear_error_and_exit_3(provision, cli_env, args):
    env = {**cli_env, "PROV_REDIS_URL": f"redis://admin:hunter2@127.0.0.1:{closed_port()}/0"}
    started = time.monotonic()
    result = await provision(*args, env=env)
    assert result.code == 3
    assert result.stdout == ""
    assert "cannot reach Redis at redis://***@127.0.0.1:" in result.stderr
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 20


@pytest.mark.redis
async def test_without_redis_url_or_local_socket_the_error_says_what_to_set(provision, cli_env):
    env = {key: value for key, value in cli_env.items() if key != "PROV_REDIS_URL"}
    result = await provision("users", "list", env=env)
    assert result.code == 3
    assert "PROV_REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.redis
async def test_a_malformed_namespace_is_a_usage_error(provision, cli_env):
    result = await provision("users", "list", env={**cli_env, "PROV_NAMESPACE": "Bad Space"})
    assert result.code == 2
    assert "PROV_NAMESPACE" in result.stderr


@pytest.mark.redis
async def test_the_namespace_keeps_panels_apart(provision, cli_env, users):
    other = {**cli_env, "PROV_NAMESPACE": cli_env["PROV_NAMESPACE"] + "x"}
    result = await provision("users", "add", "ann", "--role", "viewer", stdin=PASSWORD, env=other)
    assert result.code == 0, result
    assert await users.get("ann") is None
    listed = await provision("users", "list", "--json", env=other)
    assert [user["name"] for user in json.loads(listed.stdout)["users"]] == ["ann"]
