"""A consumer of the global event stream `prov:events`, for integrations (DESIGN §4, §5).

Each integration reads with its own consumer group, so it sees every event once per group
at least: an event is delivered again until it is acknowledged (`ack`), a restarted consumer
with the same name first gets back what it had not acknowledged, and entries left pending
by a consumer that died are taken over after `claim_idle_ms`. Filters (app, destination
state, trigger) skip the events an integration does not care about; skipped events are
acknowledged at once so they never come back.

    consumer = EventConsumer(client, RedisKeys(), group="billing", name="billing-1",
                             filters=EventFilter(triggers=frozenset({"succeed", "fail"})))
    await consumer.ensure_group()
    async for delivery in consumer.deliveries():
        handle(delivery.event)            # must be idempotent: at-least-once delivery
        await consumer.ack(delivery)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from core.errors import TamperError
from core.keys import RedisKeys
from statemachine.events import Event, event_from_fields

DEFAULT_BLOCK_MS: Final = 5000
DEFAULT_BATCH: Final = 100
DEFAULT_CLAIM_IDLE_MS: Final = 60_000


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events an integration wants; an empty set means any."""

    app_ids: frozenset[str] = frozenset()
    states: frozenset[str] = frozenset()
    triggers: frozenset[str] = frozenset()

    def wants(self, event: Event, app_id: str) -> bool:
        """Whether `event` (of a job of `app_id`) passes every filter."""
        return (
            (not self.app_ids or app_id in self.app_ids)
            and (not self.states or event.dst in self.states)
            and (not self.triggers or event.trigger in self.triggers)
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event handed to the integration, with the stream id to acknowledge."""

    stream_id: str
    event: Event
    app_id: str
    redelivered: bool


class EventConsumer:
    """One named consumer of one consumer group on `prov:events`."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: RedisKeys,
        *,
        group: str,
        name: str,
        filters: EventFilter | None = None,
        block_ms: int = DEFAULT_BLOCK_MS,
        batch: int = DEFAULT_BATCH,
        claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS,
    ) -> None:
        self._client = client
        self._keys = keys
        self.group = group
        self.name = name
        self._filters = filters or EventFilter()
        self._block_ms = block_ms
        self._batch = batch
        self._claim_idle_ms = claim_idle_ms
        self._app_of: dict[str, str] = {}

    async def ensure_group(self, *, start: str = "0") -> None:
        """Create the group if missing; `start="0"` replays history, `"$"` only new events."""
        try:
            await self._client.xgroup_create(self._keys.events, self.group, id=start, mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge a handled event: it will not be delivered to this group again."""
        await self._client.xack(self._keys.events, self.group, delivery.stream_id)

    async def _app_id(self, event: Event) -> str:
        if event.trigger == "submit":
            app = event.detail.get("app_id")
            if isinstance(app, str):
                self._app_of[event.job_id] = app
        if event.job_id not in self._app_of:
            raw = await self._client.hget(self._keys.job(event.job_id), "app_id")
            self._app_of[event.job_id] = _text(raw) if raw is not None else ""
        return self._app_of[event.job_id]

    async def _wrap(
        self, entries: list[tuple[bytes, dict[bytes | str, bytes | str] | None]], *, again: bool
    ) -> AsyncIterator[Delivery]:
        for raw_id, fields in entries:
            stream_id = _text(raw_id)
            if fields is None:  # deleted from the stream while pending: nothing to deliver
                await self._client.xack(self._keys.events, self.group, stream_id)
                continue
            try:
                event = event_from_fields(fields, stream_id=stream_id)
            except TamperError:
                # Not an event: an integration cannot act on it; `provision audit verify`
                # reports it. Acknowledged so the group keeps moving.
                await self._client.xack(self._keys.events, self.group, stream_id)
                continue
            app_id = await self._app_id(event)
            if not self._filters.wants(event, app_id):
                await self._client.xack(self._keys.events, self.group, stream_id)
                continue
            yield Delivery(stream_id=stream_id, event=event, app_id=app_id, redelivered=again)

    async def _read(self, cursor: str, *, block: int | None) -> list[Any]:
        reply = cast(
            list[tuple[bytes, list[Any]]] | None,
            await self._client.xreadgroup(
                self.group, self.name, {self._keys.events: cursor}, count=self._batch, block=block
            ),
        )
        return reply[0][1] if reply else []

    async def deliveries(self) -> AsyncIterator[Delivery]:
        """Own unacknowledged events first, then others' stale ones, then new ones; forever."""
        cursor = "0"  # our own pending entries, after this id
        while True:
            pending = await self._read(cursor, block=None)
            if not pending:
                break
            cursor = _text(pending[-1][0])
            async for delivery in self._wrap(pending, again=True):
                yield delivery
            if len(pending) < self._batch:
                break
        while True:
            reply = await self._client.xautoclaim(
                self._keys.events,
                self.group,
                self.name,
                min_idle_time=self._claim_idle_ms,
                start_id="0-0",
                count=self._batch,
            )
            claimed = cast(list[Any], reply[1] if len(reply) > 1 else [])
            async for delivery in self._wrap(claimed, again=True):
                yield delivery
            fresh = await self._read(">", block=self._block_ms)
            async for delivery in self._wrap(fresh, again=False):
                yield delivery
