"""`GET /api/jobs/<id>/stream`: a job's events and log lines, live, over Server-Sent Events.

Each message's id is `<events stream id>/<log stream id>`: the cursors of both streams after
that message, so a client reconnecting with `Last-Event-ID` resumes both with nothing lost and
nothing repeated (docs/architecture.md §8). A fresh connection starts at the job's first event and
first log
line; an empty stream's cursor is `0-0`. The two streams are merged in the order of their ids
(both come from one Redis clock; within one millisecond, see `_order_key`), so a client that
sees the terminal event has already seen every log line of the run. After the job ends and
both streams are drained, the stream stays open with keep-alive pings until the client
leaves; EventSource would otherwise reconnect forever.
"""

from __future__ import annotations

import json
from typing import Any, Final, cast

from aiohttp import web
from aiohttp_sse import sse_response
from redis.typing import KeyT, StreamIdT

from core.stream_ids import is_stream_id
from panel import appkeys
from panel.jobs.service import is_job_id, log_line_from_fields
from panel.web.errors import json_error
from statemachine.events import event_from_fields
from statemachine.machine import FAILED, RETRY_WAIT, SUCCEEDED, TERMINAL_STATES

BLOCK_MS: Final = 5000
# States an event reaches when a run is over: its output was written before it.
_AFTER_OUTPUT: Final = frozenset({SUCCEEDED, FAILED, RETRY_WAIT})
BATCH: Final = 500
EMPTY_CURSOR: Final = "0-0"

StreamEntries = list[tuple[bytes, list[tuple[bytes, dict[bytes | str, bytes | str]]]]]


def parse_cursor(last_event_id: str | None) -> tuple[str, str]:
    """The two stream cursors of a `Last-Event-ID`, or the start of both."""
    if not last_event_id:
        return EMPTY_CURSOR, EMPTY_CURSOR
    events, _, log = last_event_id.partition("/")
    if is_stream_id(events) and is_stream_id(log):
        return events, log
    return EMPTY_CURSOR, EMPTY_CURSOR


def _order_key(stream_id: str, kind: str, fields: dict[Any, Any]) -> tuple[int, int, int]:
    """Where a message goes in the merged order: by millisecond, then by what it is.

    Ids of two streams written in the same millisecond do not say which came first (each
    stream numbers its own entries), so ties follow what the agent does: a `start` event
    comes before the output of its run, and a run's output before the event that ends it.
    """
    millis, _, seq = stream_id.partition("-")
    if kind == "log":
        rank = 1
    else:
        dst = fields.get(b"dst", fields.get("dst", b""))
        ends_a_run = (dst.decode() if isinstance(dst, bytes) else dst) in _AFTER_OUTPUT
        rank = 2 if ends_a_run else 0
    return int(millis), rank, int(seq)


async def stream_job(request: web.Request) -> web.StreamResponse:
    """Stream a job's events and log lines as they happen."""
    job_id = request.match_info["job_id"]
    jobs = request.app[appkeys.JOBS]
    job = await jobs.get(job_id) if is_job_id(job_id) else None
    if job is None:
        return json_error(404, "no such job")
    keys = jobs.store.keys
    client = request.app[appkeys.REDIS]
    events_key, log_key = keys.job_events(job_id), keys.job_log(job_id)
    streams = request.app[appkeys.STREAMS]
    async with sse_response(request, headers={"Cache-Control": "no-store"}) as response:
        streams.add(response)
        events_cursor, log_cursor = parse_cursor(response.last_event_id)
        # A job that already ended only needs draining from the cursors on.
        finished = job["state"] in TERMINAL_STATES
        while response.is_connected():
            cursors: dict[KeyT, StreamIdT] = {events_key: events_cursor, log_key: log_cursor}
            reply = cast(
                StreamEntries | None,
                await client.xread(cursors, count=BATCH, block=None if finished else BLOCK_MS),
            )
            if reply and not finished:
                # A blocked XREAD is woken by one stream and answers with that one only. The
                # agent writes a run's last output in the same atomic step as the event that
                # ends it, so the event alone would come first and a client that stops at it
                # would lose the output. Read both again, from the same cursors, at once.
                reply = cast(StreamEntries | None, await client.xread(cursors, count=BATCH))
            merged: list[tuple[tuple[int, int, int], str, str, dict[Any, Any]]] = []
            for key, entries in reply or []:
                kind = "event" if key.decode() == events_key else "log"
                for raw_id, fields in entries:
                    text_id = raw_id.decode()
                    merged.append((_order_key(text_id, kind, fields), kind, text_id, fields))
            merged.sort(key=lambda item: item[0])
            for _key, kind, message_id, fields in merged:
                if kind == "event":
                    event = event_from_fields(fields, stream_id=message_id)
                    events_cursor = message_id
                    data: dict[str, Any] = event.as_dict()
                    if event.dst in TERMINAL_STATES:
                        finished = True
                else:
                    log_cursor = message_id
                    data = log_line_from_fields(message_id, fields).as_dict()
                await response.send(
                    json.dumps(data, ensure_ascii=False),
                    id=f"{events_cursor}/{log_cursor}",
                    event=kind,
                )
            if finished and not merged:
                # Ended and drained: hold the connection (pings keep it alive) until the
                # client goes or the panel stops.
                await response.wait()
                break
    return response
