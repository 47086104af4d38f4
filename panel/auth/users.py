"""Users in Redis: a role and an argon2 password hash each (argon2-cffi).

A login answers the same way and takes the same kind of time for an unknown user as for a
wrong password: an unknown name is verified against a dummy hash, so neither the answer nor
its timing tells which names exist. A hash made with older parameters is re-made at the
next successful login (`check_needs_rehash`).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Final, cast

import redis.asyncio as aioredis
from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from core.errors import ProvisionError
from core.keys import RedisKeys
from core.text import as_text
from panel.auth.access import Role

USER_NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9_.@-]{0,63}")
MIN_PASSWORD_CHARS: Final = 12
MAX_PASSWORD_CHARS: Final = 1024


class UserError(ProvisionError, ValueError):
    """A user operation was refused; the message says why, for a person."""


def is_valid_user_name(name: str) -> bool:
    """Lower-case letters, digits and `_ . @ -`, 1 to 64 characters."""
    return bool(USER_NAME_PATTERN.fullmatch(name))


def check_password_rules(password: str) -> None:
    """Refuse a password too short or too long to be sensible."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"the password must be at least {MIN_PASSWORD_CHARS} characters long")
    if len(password) > MAX_PASSWORD_CHARS:
        raise UserError(f"the password must be at most {MAX_PASSWORD_CHARS} characters long")


@dataclass(frozen=True, slots=True)
class StoredUser:
    """A user as listed (never with the hash)."""

    name: str
    role: Role
    created_at: int
    # Sessions opened before this instant (epoch ms) are no longer valid: a password change
    # logs every browser of the user out.
    password_changed_at: int = 0


def stored_user(
    name: str, role: bytes | None, created_at: bytes | None, password_changed_at: bytes | None
) -> StoredUser | None:
    """A user from their hash's fields; None without a name, a role, or with an unknown one."""
    if not is_valid_user_name(name) or role is None:
        return None
    try:
        known_role = Role(as_text(role))
    except ValueError:
        return None
    return StoredUser(
        name=name,
        role=known_role,
        created_at=int(created_at or b"0"),
        password_changed_at=int(password_changed_at or b"0"),
    )


# argon2-cffi's default parameters (RFC 9106, low memory), for the password nobody has.
_DUMMY_HASH: Final = (
    "$argon2id$v=19$m=65536,t=3,p=4$LQUVRaDgNsK7vChTiRIlPg"
    "$8paxyLxZNqD9uJA4eF77YiCSHBqSjGVtHD1Vm6vKlpg"
)


def _same_parameters(hasher: PasswordHasher, stored: str) -> bool:
    """Whether verifying `stored` costs what verifying a hash made by `hasher` costs."""
    made = extract_parameters(stored)
    return (made.time_cost, made.memory_cost, made.parallelism, made.hash_len, made.type) == (
        hasher.time_cost,
        hasher.memory_cost,
        hasher.parallelism,
        hasher.hash_len,
        hasher.type,
    )


class UserStore:
    """Users of one namespace."""

    def __init__(
        self, client: aioredis.Redis, keys: RedisKeys, hasher: PasswordHasher | None = None
    ) -> None:
        self._client = client
        self._keys = keys
        self._hasher = hasher or PasswordHasher()
        # Verified when the user is unknown, so that case costs what a real check costs. A
        # hash made at start set the panel's peak memory (argon2's 64 MiB) before any
        # request; one made with the same parameters costs the same to verify.
        self._dummy_hash = (
            _DUMMY_HASH
            if _same_parameters(self._hasher, _DUMMY_HASH)
            else self._hasher.hash("not a real password, only for timing")
        )

    async def add(self, name: str, role: Role, password: str) -> None:
        """Create a user; UserError if the name is taken or invalid, or the password weak."""
        if not is_valid_user_name(name):
            raise UserError("a user name is 1-64 lower-case letters, digits, or _ . @ -")
        check_password_rules(password)
        created = await self._client.hsetnx(self._keys.user(name), "role", role.value)
        if not created:
            raise UserError(f"user {name!r} already exists")
        await self._client.hset(
            self._keys.user(name),
            mapping={
                "password_hash": self._hasher.hash(password),
                "created_at": str(int(time.time() * 1000)),
            },
        )
        await self._client.sadd(self._keys.users, name)

    async def set_password(self, name: str, password: str) -> None:
        """Replace a user's password."""
        check_password_rules(password)
        if not await self._client.exists(self._keys.user(name)):
            raise UserError(f"no user {name!r}")
        await self._client.hset(
            self._keys.user(name),
            mapping={
                "password_hash": self._hasher.hash(password),
                "password_changed_at": str(int(time.time() * 1000)),
            },
        )

    async def set_role(self, name: str, role: Role) -> None:
        """Change a user's role."""
        if not await self._client.exists(self._keys.user(name)):
            raise UserError(f"no user {name!r}")
        await self._client.hset(self._keys.user(name), "role", role.value)

    async def remove(self, name: str) -> bool:
        """Delete a user; False if there was none."""
        removed = await self._client.delete(self._keys.user(name))
        await self._client.srem(self._keys.users, name)
        return bool(removed)

    async def get(self, name: str) -> StoredUser | None:
        """One user, or None."""
        if not is_valid_user_name(name):
            return None
        raw = cast(dict[bytes, bytes], await self._client.hgetall(self._keys.user(name)))
        return stored_user(
            name, raw.get(b"role"), raw.get(b"created_at"), raw.get(b"password_changed_at")
        )

    async def all(self) -> list[StoredUser]:
        """Every user, by name."""
        names = sorted(as_text(n) for n in await self._client.smembers(self._keys.users))
        users = [await self.get(name) for name in names]
        return [user for user in users if user is not None]

    async def count(self) -> int:
        """How many users exist."""
        return int(await self._client.scard(self._keys.users))

    async def authenticate(self, name: str, password: str) -> StoredUser | None:
        """The user if `password` is theirs; None otherwise, in comparable time."""
        stored_hash = None
        if is_valid_user_name(name) and len(password) <= MAX_PASSWORD_CHARS:
            raw = await self._client.hget(self._keys.user(name), "password_hash")
            stored_hash = as_text(raw) if raw is not None else None
        try:
            # argon2 is deliberately slow (tens of ms): off the event loop, so one login
            # never stalls every other request of the panel.
            await asyncio.to_thread(
                self._hasher.verify, stored_hash or self._dummy_hash, password[:MAX_PASSWORD_CHARS]
            )
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if stored_hash is None:
            return None  # the dummy hash matched: impossible in practice, refused anyway
        if self._hasher.check_needs_rehash(stored_hash):
            await self._client.hset(
                self._keys.user(name), "password_hash", self._hasher.hash(password)
            )
        return await self.get(name)
