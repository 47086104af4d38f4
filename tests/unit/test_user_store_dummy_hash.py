"""The password nobody has: verified for unknown users, and never hashed at start."""

from __future__ import annotations

from argon2 import PasswordHasher

from core.keys import RedisKeys
from panel.auth.users import _DUMMY_HASH, UserStore, _same_parameters


class CountingHasher(PasswordHasher):
    def __init__(self, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.hashed = 0

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.hashed += 1
        return super().hash(password, salt=salt)


def test_the_default_hasher_uses_the_ready_made_hash_and_hashes_nothing_at_start() -> None:
    hasher = CountingHasher()
    assert _same_parameters(hasher, _DUMMY_HASH)  # fails if argon2-cffi changes its defaults
    UserStore(client=None, keys=RedisKeys("prov"), hasher=hasher)  # type: ignore[arg-type]
    assert hasher.hashed == 0


def test_other_parameters_get_a_dummy_hash_of_their_own() -> None:
    hasher = CountingHasher(time_cost=1, memory_cost=8, parallelism=1)
    assert not _same_parameters(hasher, _DUMMY_HASH)
    UserStore(client=None, keys=RedisKeys("prov"), hasher=hasher)  # type: ignore[arg-type]
    assert hasher.hashed == 1
