"""Submission limits: accepted jobs per user and minute, and one user's unfinished jobs.

A CI script or an integration queueing a fleet's jobs at once must get through, refused forms
must count nothing, and no single user may flood the queue. Both limits are checked inside
the atomic step that stores the job, so a refused submission leaves nothing behind. The panel,
its fake clock and the fixtures come from test_access.py.
"""

from __future__ import annotations

import asyncio

import pytest

from core.runtime.settings import PanelSettings
from panel import appkeys
from panel.auth.access import Role
from tests.auth_support import bearer
from tests.integration import test_access as shared
from tests.integration.test_access import APP, Panel

cheap_argon2 = shared.cheap_argon2
installers = shared.installers
make_panel = shared.make_panel
panel = shared.panel

pytestmark = pytest.mark.redis


async def post_install(panel: Panel, token: str, **inputs: object) -> tuple[int, dict, str]:
    """POST /api/install for APP; (status, body, Retry-After header or "")."""
    response = await panel.client.post(
        "/api/install", json={"app_id": APP, "inputs": inputs}, headers=bearer(token)
    )
    return response.status, await response.json(), response.headers.get("Retry-After", "")


async def counted(panel: Panel, user: str) -> int:
    window = int(panel.clock()) // 60
    return int(await panel.redis.get(panel.keys.rate("submit", user, window)) or 0)


async def queued_entries(panel: Panel) -> int:
    return int(await panel.redis.xlen(panel.keys.jobs_stream("local")))


def test_the_defaults_let_automation_work():
    settings = PanelSettings.from_env({})
    assert settings.submissions_per_minute == 600
    assert settings.max_unfinished_per_user == 1000


async def test_250_accepted_submissions_by_one_user_in_a_minute_all_get_201(panel):
    token = await panel.token("ci", Role.OPERATOR)
    statuses = [(await post_install(panel, token))[0] for _ in range(250)]
    assert statuses == [201] * 250
    assert await panel.job_count() == 250
    assert await counted(panel, "ci") == 250


async def test_refused_forms_count_nothing_and_the_limit_names_itself(make_panel):
    panel = await make_panel(PROV_SUBMISSIONS_PER_MINUTE="2")
    token = await panel.token("adam", Role.OPERATOR)
    for _ in range(5):
        status, body, _ = await post_install(panel, token, port="not a port")
        assert status == 422, body
    assert await counted(panel, "adam") == 0
    await panel.submit(token)
    await panel.submit(token)
    status, body, retry_after = await post_install(panel, token)
    assert status == 429
    assert body["error"] == "rate_limited"
    assert "per user and minute" in body["message"]
    assert "PROV_SUBMISSIONS_PER_MINUTE" in body["message"]
    assert 1 <= int(retry_after) <= 60
    # Nothing of the refused submission exists: no job, no stream entry, no count.
    assert await panel.job_count() == 2
    assert await queued_entries(panel) == 2
    assert await counted(panel, "adam") == 2
    other = await panel.token("beth", Role.OPERATOR)
    await panel.submit(other)  # the limit is per user
    panel.clock.advance(60)
    await panel.submit(token)
    assert await panel.job_count() == 4


async def test_a_form_over_the_limit_is_shown_again_with_its_answers_and_a_429(make_panel):
    panel = await make_panel(PROV_SUBMISSIONS_PER_MINUTE="1")
    browser = await panel.browser("cleo", Role.OPERATOR)
    csrf = await browser.csrf(f"/apps/{APP}")
    first = await browser.post(f"/apps/{APP}/install", data={"port": "8081", "_csrf": csrf})
    assert first.status == 303
    again = await browser.post(f"/apps/{APP}/install", data={"port": "8082", "_csrf": csrf})
    assert again.status == 429
    assert again.content_type == "text/html"
    page = await again.text()
    assert 'id="submission-refused"' in page
    assert "per user and minute" in page
    assert 'value="8082"' in page  # the answers are kept
    assert 1 <= int(again.headers["Retry-After"]) <= 60
    assert await panel.job_count() == 1


async def test_the_unfinished_cap_gives_429_and_frees_up_as_jobs_end(make_panel):
    panel = await make_panel(PROV_MAX_UNFINISHED_PER_USER="3")
    token = await panel.token("dan", Role.OPERATOR)
    jobs = [await panel.submit(token) for _ in range(3)]
    status, body, retry_after = await post_install(panel, token)
    assert status == 429
    assert body["error"] == "rate_limited"
    assert "unfinished" in body["message"]
    assert "PROV_MAX_UNFINISHED_PER_USER" in body["message"]
    assert int(retry_after) >= 1
    assert await panel.job_count() == 3
    assert await counted(panel, "dan") == 3  # a refused submission is not counted either
    other = await panel.token("eve", Role.OPERATOR)
    await panel.submit(other)  # the cap is per user

    # A cancel by the panel ends a queued job: one place frees up.
    cancel = await panel.client.post(f"/api/jobs/{jobs[0]}/cancel", headers=bearer(token))
    assert cancel.status == 202
    assert (await panel.job_state(jobs[0]))["state"] == "failed"
    jobs.append(await panel.submit(token))
    assert (await post_install(panel, token))[0] == 429

    # An agent ending a job frees a place in the same step.
    store = panel.client.app[appkeys.JOBS].store
    await store.transition(jobs[1], "fail", actor="agent:test", detail={"reason": "expired"})
    jobs.append(await panel.submit(token))
    assert (await post_install(panel, token))[0] == 429
    assert await panel.redis.scard(panel.keys.unfinished("dan")) == 3


async def test_the_cap_holds_against_a_burst_of_concurrent_submissions(make_panel):
    panel = await make_panel(PROV_MAX_UNFINISHED_PER_USER="5")
    token = await panel.token("fay", Role.OPERATOR)
    results = await asyncio.gather(*(post_install(panel, token) for _ in range(20)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [201] * 5 + [429] * 15
    assert await panel.job_count() == 5
    assert await queued_entries(panel) == 5
