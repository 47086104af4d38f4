"""The job page's verified timeline: the mark, each event's integrity, and what tampering shows."""

from __future__ import annotations

from html import unescape

import pytest

from statemachine.audit.archive_record import ArchiveRecord, archive_pointer, save_archive_record
from statemachine.store import EventStore
from tests.integration.test_panel_pages import (  # noqa: F401 - fixtures used by name
    installers,
    page,
    panel,
    store_of,
    submitted_job,
)

pytestmark = pytest.mark.redis


async def _run_to_success(store: EventStore, job_id: str) -> None:
    for trigger in ("verify", "validate"):
        await store.transition(job_id, trigger, actor="agent:a1")
    await store.transition(job_id, "start", actor="agent:a1", attempt=1)
    await store.transition(job_id, "succeed", actor="agent:a1", detail={"exit_code": 0})


async def test_an_intact_job_shows_the_verified_mark_and_each_events_chain(panel):  # noqa: F811
    job_id = await submitted_job(panel)
    store = store_of(panel)
    await _run_to_success(store, job_id)
    status, html = await page(panel, f"/jobs/{job_id}")
    assert status == 200
    assert 'id="chain-mark"' in html and "Record verified · 5 events" in html
    assert 'id="chain-problems"' not in html
    assert f"provision audit verify --job {job_id}" in unescape(html)
    events = await store.job_events(job_id)
    assert html.count('<details class="event-integrity">') == 5
    for event in events:
        assert event.hash in html
    assert "(first event)" in html and events[0].hash in html and events[1].prev == events[0].hash


async def test_a_tampered_job_loses_the_mark_and_names_the_event(panel, redis_client):  # noqa: F811
    job_id = await submitted_job(panel)
    store = store_of(panel)
    await _run_to_success(store, job_id)
    entries = await redis_client.xrange(store.keys.job_events(job_id))
    _stream_id, fields = entries[3]
    altered = dict(fields)
    altered[b"actor"] = b"agent:mallory"
    # Rewrite the stream with the altered event in place, as an attacker with Redis access would.
    await redis_client.delete(store.keys.job_events(job_id))
    for number, (_sid, entry) in enumerate(entries):
        await redis_client.xadd(store.keys.job_events(job_id), altered if number == 3 else entry)
    status, html = await page(panel, f"/jobs/{job_id}")
    assert status == 200
    assert "Record verified" not in html and "Record does not verify" in html
    problems = html[html.index('id="chain-problems"') :]
    event_id = fields[b"event_id"].decode()
    assert f"event <code>{event_id}</code>: hash does not match" in problems
    assert f'class="event event-bad" data-event-id="{event_id}"' in html


async def test_a_drifted_snapshot_is_shown_as_a_problem(panel, redis_client):  # noqa: F811
    job_id = await submitted_job(panel)
    store = store_of(panel)
    await redis_client.hset(store.keys.job(job_id), "requested_by", "mallory")
    _, html = await page(panel, f"/jobs/{job_id}")
    assert "Record does not verify" in html and "snapshot drift: requested_by" in unescape(html)


async def test_an_archived_job_says_where_its_events_went(panel, redis_client, ring):  # noqa: F811
    job_id = await submitted_job(panel)
    store = store_of(panel)
    await _run_to_success(store, job_id)
    record = ArchiveRecord("01JARCHIVE", "/srv/a.jsonl", "0" * 64, 1, "1-0", 5, 1, 1)
    await save_archive_record(redis_client, store.keys, ring, record)
    last_hash = (await store.snapshot(job_id))["last_hash"]
    await redis_client.delete(store.keys.job_events(job_id))
    pointer = archive_pointer(ring, "01JARCHIVE", job_id, last_hash)
    await redis_client.hset(store.keys.job(job_id), "archived_to", pointer)
    status, html = await page(panel, f"/jobs/{job_id}")
    assert status == 200
    assert 'id="chain-archived"' in html and "<code>01JARCHIVE</code>" in html
    assert "Record verified" not in html and "Record does not verify" not in html
    # The same pointer on another job is not one the archive made: the page says so.
    other = await submitted_job(panel)
    await redis_client.delete(store.keys.job_events(other))
    await redis_client.hset(store.keys.job(other), "archived_to", pointer)
    _, html = await page(panel, f"/jobs/{other}")
    assert "Record does not verify" in html and "archive pointer: bad signature" in html
