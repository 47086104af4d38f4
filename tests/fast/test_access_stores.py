"""Users, API tokens, browser sessions and login counters: key and hash logic on fakeredis."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from core.keys import RedisKeys
from panel.auth.access import Role
from panel.auth.ratelimit import Limit, RateLimiter
from panel.auth.sessions import SessionStore, session_hash
from panel.auth.tokens import TokenStore, token_hash
from panel.auth.users import UserError, UserStore

KEYS = RedisKeys("fast")
PASSWORD = "correct horse battery staple"
NOW_MS = 1_800_000_000_000


def cheap_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


async def test_a_user_is_stored_by_name_with_a_hash_never_the_password(fake_redis):
    users = UserStore(fake_redis, KEYS, cheap_hasher())
    await users.add("ada", Role.OPERATOR, PASSWORD)
    stored = await fake_redis.hgetall(KEYS.user("ada"))
    assert stored[b"role"] == b"operator"
    assert stored[b"password_hash"].startswith(b"$argon2id$")
    assert PASSWORD.encode() not in b"".join(stored.values())
    assert await fake_redis.smembers(KEYS.users) == {b"ada"}
    assert (await users.authenticate("ada", PASSWORD)).role == Role.OPERATOR
    assert await users.authenticate("ada", "wrong password, long enough") is None
    assert await users.authenticate("nobody", PASSWORD) is None


async def test_a_taken_or_invalid_name_is_refused_and_nothing_changes(fake_redis):
    users = UserStore(fake_redis, KEYS, cheap_hasher())
    await users.add("ada", Role.VIEWER, PASSWORD)
    with pytest.raises(UserError, match="already exists"):
        await users.add("ada", Role.ADMIN, PASSWORD)
    with pytest.raises(UserError):
        await users.add("Bad Name", Role.ADMIN, PASSWORD)
    assert (await users.get("ada")).role == Role.VIEWER
    assert await users.count() == 1


async def test_removing_a_user_removes_their_hash_and_membership(fake_redis):
    users = UserStore(fake_redis, KEYS, cheap_hasher())
    await users.add("bob", Role.ADMIN, PASSWORD)
    assert await users.remove("bob")
    assert not await users.remove("bob")
    assert await fake_redis.exists(KEYS.user("bob")) == 0
    assert await users.count() == 0


async def test_a_token_is_stored_by_its_hash_only_and_revoked_by_its_id(fake_redis):
    tokens = TokenStore(fake_redis, KEYS)
    token, info = await tokens.create("ada", name="ci")
    hashed = token_hash(token)
    assert await fake_redis.exists(KEYS.token(hashed)) == 1
    assert token.encode() not in b"".join(await fake_redis.hvals(KEYS.token(hashed)))
    assert (await tokens.authenticate(token, now_ms=NOW_MS)).user == "ada"
    assert await tokens.revoke(info.token_id) == 1
    assert await tokens.authenticate(token, now_ms=NOW_MS) is None
    assert await fake_redis.smembers(KEYS.tokens) == set()


async def test_an_expired_token_authenticates_nothing(fake_redis):
    tokens = TokenStore(fake_redis, KEYS)
    token, _ = await tokens.create("ada", expires_at_ms=NOW_MS)
    assert await tokens.authenticate(token, now_ms=NOW_MS - 1) is not None
    assert await tokens.authenticate(token, now_ms=NOW_MS + 1) is None


async def test_a_session_lives_under_the_hash_of_its_cookie_and_times_out(fake_redis):
    sessions = SessionStore(fake_redis, KEYS, idle_s=60, absolute_s=3600)
    session = await sessions.create("ada", now_ms=NOW_MS)
    key = KEYS.session(session_hash(session.session_id))
    assert await fake_redis.hget(key, "user") == b"ada"
    assert 0 < await fake_redis.ttl(key) <= 60
    assert (await sessions.get(session.session_id, now_ms=NOW_MS + 30_000)).user == "ada"
    assert await sessions.get(session.session_id, now_ms=NOW_MS + 10 * 60_000) is None
    assert await fake_redis.exists(key) == 0  # an idle session is deleted when seen


async def test_login_counters_count_per_window_and_clear(fake_redis):
    limiter = RateLimiter(fake_redis, KEYS)
    limit = Limit(count=2, window_s=60)
    now_s = 1_800_000_000 // 60 * 60
    verdicts = [await limiter.hit("login", "ada", limit, now_s=now_s) for _ in range(3)]
    assert [verdict.allowed for verdict in verdicts] == [True, True, False]
    assert verdicts[-1].retry_after_s == 60
    assert not (await limiter.blocked("login", "ada", limit, now_s=now_s)).allowed
    assert (await limiter.blocked("login", "ada", limit, now_s=now_s + 60)).allowed
    await limiter.clear("login", "ada", limit, now_s=now_s)
    assert (await limiter.blocked("login", "ada", limit, now_s=now_s)).allowed
