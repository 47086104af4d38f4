"""Authentication in one round trip; a submission's limits checked and counted in the step that
stores it, so a submission costs two.

What Redis receives is watched with MONITOR (the real server's own record of every command,
with the commands a Lua script ran marked as such), so these tests see round trips as Redis
sees them. The panel, the fake clock and the fixtures come from test_access.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from panel.auth.access import Role
from panel.auth.tokens import token_hash
from tests.agent_support import write_app
from tests.auth_support import bearer
from tests.integration import test_access as shared
from tests.integration.test_access import APP, Panel

cheap_argon2 = shared.cheap_argon2
make_panel = shared.make_panel
panel = shared.panel

pytestmark = pytest.mark.redis

BROKEN_APP = "broken"


@pytest.fixture
def installers(tmp_path: Path) -> Path:
    """test_access's app, and one whose manifest is invalid (a 409 on submit)."""
    root = tmp_path / "installers"
    write_app(
        root,
        APP,
        "exit 0",
        inputs=[
            {"name": "port", "type": "port", "default": 8080},
            {"name": "password", "type": "password"},
        ],
    )
    folder = root / BROKEN_APP
    folder.mkdir()
    (folder / "manifest.yml").write_text(f"id: {BROKEN_APP}\n")
    return root


@dataclass
class Seen:
    """Commands Redis ran on the test's namespace: sent by a client, or run by a script."""

    sent: list[str] = field(default_factory=list)
    scripted: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        """The names of the commands clients sent (one per round trip, barring pipelines)."""
        return [command.split(" ", 1)[0].upper() for command in self.sent]


@asynccontextmanager
async def watched(redis_url: str, namespace: str) -> AsyncIterator[Seen]:
    """Record what Redis runs on `namespace` inside the block (up to a marker sent after it)."""
    seen = Seen()
    watcher = aioredis.Redis.from_url(redis_url)
    sender = aioredis.Redis.from_url(redis_url)
    marker = f"{namespace}:end-of-watch:{uuid.uuid4().hex}"
    try:
        async with watcher.monitor() as monitor:
            yield seen
            await sender.echo(marker)  # Redis runs commands in order: all before it are seen
            while True:
                info = await monitor.next_command()
                command = info["command"]
                if marker in command:
                    break
                if namespace in command:
                    target = seen.scripted if info["client_type"] == "lua" else seen.sent
                    target.append(command)
    finally:
        await watcher.aclose()
        await sender.aclose()


def install(app_id: str = APP, **inputs: Any) -> dict[str, Any]:
    return {"app_id": app_id, "inputs": inputs}


async def submissions_counted(panel: Panel, user: str) -> int:
    """The user's submissions counted in the current minute's rate-limit window."""
    window = int(panel.clock()) // 60
    value = await panel.redis.get(panel.keys.rate("submit", user, window))
    return int(value or 0)


Post = Callable[..., Awaitable[int]]


def poster(panel: Panel, token: str) -> Post:
    """POST /api/install with `token`: a JSON body, or `raw` bytes sent as JSON; the status."""

    async def post(body: Any = None, *, raw: bytes | None = None) -> int:
        headers = {**bearer(token), "Content-Type": "application/json"}
        response = await panel.client.post(
            "/api/install", headers=headers, data=raw if raw is not None else json.dumps(body)
        )
        await response.read()
        return response.status

    return post


async def test_an_api_request_is_authenticated_in_one_round_trip(panel, redis_url):
    token = await panel.token("ava", Role.VIEWER)
    assert (await panel.client.get("/api/openapi.json", headers=bearer(token))).status == 200
    async with watched(redis_url, panel.namespace) as seen:
        response = await panel.client.get("/api/openapi.json", headers=bearer(token))
        assert response.status == 200
    assert seen.names() == ["EVALSHA"]
    assert any(token_hash(token) in command for command in seen.sent)
    assert [command.split()[0].upper() for command in seen.scripted] == ["HGETALL", "HMGET"]


async def test_a_browser_page_is_authenticated_in_one_round_trip(panel, redis_url):
    browser = await panel.browser("bob", Role.OPERATOR)
    assert (await browser.get(f"/apps/{APP}")).status == 200
    async with watched(redis_url, panel.namespace) as seen:
        assert (await browser.get(f"/apps/{APP}")).status == 200
    assert seen.names() == ["EVALSHA"]
    assert not any("password_hash" in command for command in seen.scripted)


async def test_a_submission_is_authenticated_then_stored_and_counted_in_two_round_trips(
    panel, redis_url
):
    token = await panel.token("cleo", Role.OPERATOR)
    await panel.submit(token)
    async with watched(redis_url, panel.namespace) as seen:
        job_id = await panel.submit(token)
    rate_key = panel.keys.rate("submit", "cleo", int(panel.clock()) // 60)
    unfinished_key = panel.keys.unfinished("cleo")
    # The credential, then the atomic submit, which checks and counts both limits itself.
    assert seen.names() == ["EVALSHA", "EVALSHA"]
    scripted = seen.scripted
    assert any(c.upper().startswith("INCR") and rate_key in c for c in scripted)
    assert any(c.upper().startswith("SCARD") and unfinished_key in c for c in scripted)
    assert any(c.upper().startswith("SADD") and job_id in c for c in scripted)
    assert await submissions_counted(panel, "cleo") == 2


async def test_only_accepted_submissions_are_counted(panel):
    token = await panel.token("dora", Role.OPERATOR)
    post = poster(panel, token)
    await panel.submit(token)
    assert await submissions_counted(panel, "dora") == 1
    assert await post(raw=b"{not json") == 400
    assert await post({"app_id": APP, "inputs": {}, "extra": 1}) == 400
    assert await post(install("no-such-app")) == 404
    assert await post(install(BROKEN_APP)) == 409
    assert await post(install(port="not a port")) == 422
    assert await submissions_counted(panel, "dora") == 1  # none of the refused ones counted
    assert await panel.redis.scard(panel.keys.unfinished("dora")) == 1
    assert await post(install()) == 201
    assert await submissions_counted(panel, "dora") == 2


async def test_a_known_tokens_revocation_or_demotion_stops_the_very_next_submission(panel):
    token = await panel.token("emil", Role.OPERATOR)
    other = await panel.token("emil", Role.OPERATOR)
    await panel.submit(token)
    await panel.submit(other)
    await panel.users.set_role("emil", Role.VIEWER)
    assert await poster(panel, token)(install()) == 403
    await panel.users.set_role("emil", Role.OPERATOR)
    assert await panel.tokens.revoke(token_hash(token)[:12]) == 1
    assert await poster(panel, token)(install()) == 401
    await panel.users.remove("emil")
    assert await poster(panel, other)(install()) == 401
    assert await submissions_counted(panel, "emil") == 2
    assert await panel.job_count() == 2


async def test_a_known_tokens_expiry_stops_the_very_next_submission_uncounted(panel):
    await panel.add_user("fay", Role.OPERATOR)
    expires_ms = int(panel.clock() * 1000) + 30_000
    token, _info = await panel.tokens.create("fay", expires_at_ms=expires_ms)
    await panel.submit(token)
    panel.clock.advance(30)
    assert await poster(panel, token)(install()) == 401
    assert await submissions_counted(panel, "fay") == 1


async def test_a_known_token_past_the_limit_gets_429_and_queues_nothing(make_panel):
    panel = await make_panel(PROV_SUBMISSIONS_PER_MINUTE="2")
    token = await panel.token("gus", Role.OPERATOR)
    await panel.submit(token)
    await panel.submit(token)
    response = await panel.client.post("/api/install", json=install(), headers=bearer(token))
    assert response.status == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert await panel.job_count() == 2
    panel.clock.advance(60)
    await panel.submit(token)
    assert await panel.job_count() == 3
