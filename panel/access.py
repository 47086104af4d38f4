"""Who is asking: the seam where access control plugs in.

Until users, sessions and tokens land (the access-control issue), the panel binds to
127.0.0.1 only and every request acts as the local operator. Handlers ask `current_user()`
and `require()` so that the real checks replace this module without touching them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web


class Role(StrEnum):
    """DESIGN §7's three roles, each allowed what the previous is and more."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated user and their role."""

    name: str
    role: Role

    def may(self, needed: Role) -> bool:
        """Whether this user's role includes `needed`."""
        return _RANK[self.role] >= _RANK[needed]


LOCAL_OPERATOR = User(name="local", role=Role.ADMIN)


def current_user(request: web.Request) -> User:
    """The user making `request` (the local operator until access control lands)."""
    del request
    return LOCAL_OPERATOR
