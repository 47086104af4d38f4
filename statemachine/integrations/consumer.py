"""A consumer of the global event stream `prov:events`, for integrations (docs/architecture.md §4,
§5).

Each integration reads with its own consumer group, so it sees every event once per group
at least: an event is delivered again until it is acknowledged (`ack`), a restarted consumer
with the same name first gets back what it had not acknowledged, and entries left pending
by a consumer that died are taken over after `claim_idle_ms`. Filters (app, destination
state, trigger) skip the events an integration does not care about; skipped events are
acknowledged at once so they never come back.

An entry that cannot be delivered is handed to `on_undeliverable` (which must acknowledge
it, and may record it), or else logged and acknowledged: one that was deleted from the
stream while pending (`audit archive` trims it; Redis then hands it back with no fields, or
XAUTOCLAIM reports it deleted), and one that does not parse as an event.

    consumer = EventConsumer(client, RedisKeys(), group="billing", name="billing-1",
                             filters=EventFilter(triggers=frozenset({"succeed", "fail"})))
    await consumer.ensure_group()
    async for delivery in consumer.deliveries():
        handle(delivery.event)            # must be idempotent: at-least-once delivery
        await consumer.ack(delivery)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from core.errors import TamperError
from core.keys import RedisKeys
from core.text import as_text_lenient
from statemachine.events import Event, event_from_fields
from statemachine.machine import Trigger

DEFAULT_BLOCK_MS: Final = 5000
DEFAULT_BATCH: Final = 100
DEFAULT_CLAIM_IDLE_MS: Final = 60_000
# Jobs whose app is remembered: enough for the jobs active at once, bounded so a consumer
# running for months does not keep one entry per job ever seen.
DEFAULT_APP_CACHE_SIZE: Final = 4096
# What of an undeliverable entry's own fields is kept to name it (a forged one may be huge).
_HINT_CHARS: Final = 64
_PROBLEM_CHARS: Final = 200

log = structlog.get_logger("consumer")


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


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """An entry of `prov:events` that cannot be handed over as an event, and why."""

    stream_id: str
    reason: Literal["trimmed", "malformed"]
    problem: str  # a sentence for people: what exactly is wrong
    hints: Mapping[str, str]  # event_id, job_id, trigger as far as the entry still says
    pending: bool  # still pending in the group; False when XAUTOCLAIM already dropped it


UndeliverableHandler = Callable[[Undeliverable], Awaitable[None]]


def _hints(fields: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in fields.items():
        name = as_text_lenient(key)
        if name in ("event_id", "job_id", "trigger"):
            found[name] = as_text_lenient(value)[:_HINT_CHARS]
    return found


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
        on_undeliverable: UndeliverableHandler | None = None,
        app_cache_size: int = DEFAULT_APP_CACHE_SIZE,
    ) -> None:
        self._client = client
        self._keys = keys
        self.group = group
        self.name = name
        self._filters = filters or EventFilter()
        self._block_ms = block_ms
        self._batch = batch
        self._claim_idle_ms = claim_idle_ms
        self._on_undeliverable = on_undeliverable or self._drop
        # job id -> app id, least recently used first
        self._app_of: OrderedDict[str, str] = OrderedDict()
        self._app_cache_size = max(app_cache_size, 1)

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

    @property
    def cached_apps(self) -> int:
        """How many jobs' apps are remembered (at most `app_cache_size`)."""
        return len(self._app_of)

    async def _app_id(self, event: Event) -> str:
        job_id = event.job_id
        app = event.detail.get("app_id") if event.trigger == Trigger.SUBMIT else None
        if not isinstance(app, str):
            app = self._app_of.get(job_id)
        if app is None:
            raw = await self._client.hget(self._keys.job(job_id), "app_id")
            app = as_text_lenient(raw) if raw is not None else ""
        self._app_of[job_id] = app
        self._app_of.move_to_end(job_id)
        while len(self._app_of) > self._app_cache_size:
            self._app_of.popitem(last=False)
        return app

    async def _drop(self, entry: Undeliverable) -> None:
        """Without a handler: say so and acknowledge, so the group keeps moving."""
        log.warning(
            "consumer.undeliverable",
            group=self.group,
            stream_id=entry.stream_id,
            reason=entry.reason,
            problem=entry.problem,
        )
        if entry.pending:
            await self._client.xack(self._keys.events, self.group, entry.stream_id)

    async def _wrap(
        self, entries: list[tuple[bytes, dict[bytes | str, bytes | str] | None]], *, again: bool
    ) -> AsyncIterator[Delivery]:
        for raw_id, fields in entries:
            stream_id = as_text_lenient(raw_id)
            if not fields:
                # Deleted from the stream while pending (redis-py shows it as {}; older
                # versions as None): there is nothing left to deliver.
                await self._on_undeliverable(
                    Undeliverable(
                        stream_id=stream_id,
                        reason="trimmed",
                        problem="the entry was deleted from the event stream while pending",
                        hints={},
                        pending=True,
                    )
                )
                continue
            try:
                event = event_from_fields(fields, stream_id=stream_id)
            except (TamperError, ValueError, RecursionError, OverflowError) as error:
                # Not an event (`provision audit verify` reports it too): an integration cannot
                # act on it. The parse errors besides TamperError guard against limits the
                # parser may not enforce itself (huge integers, deep nesting).
                problem = str(error) if isinstance(error, TamperError) else type(error).__name__
                await self._on_undeliverable(
                    Undeliverable(
                        stream_id=stream_id,
                        reason="malformed",
                        problem=problem[:_PROBLEM_CHARS],
                        hints=_hints(fields),
                        pending=True,
                    )
                )
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
            cursor = as_text_lenient(pending[-1][0])
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
            # Redis 7 drops entries deleted while pending from the group and names them here,
            # once: the last chance to say they will never be delivered.
            for raw_id in cast(list[bytes], reply[2] if len(reply) > 2 else []):
                await self._on_undeliverable(
                    Undeliverable(
                        stream_id=as_text_lenient(raw_id),
                        reason="trimmed",
                        problem="the entry was deleted from the event stream while pending",
                        hints={},
                        pending=False,
                    )
                )
            fresh = await self._read(">", block=self._block_ms)
            async for delivery in self._wrap(fresh, again=False):
                yield delivery
