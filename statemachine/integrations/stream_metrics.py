"""Queue and consumer-group gauges read from Redis at scrape time, shared by panel and agent.

A prometheus_client collector cannot await, so a scrape first awaits `read_stream_stats` (a
few pure reads per target and per group: XLEN, XINFO GROUPS, ZCARD, HVALS) and hands the
result to `StreamCollector.update`; rendering the registry then yields that snapshot. The
snapshot replaces the previous one whole, so a group or target that vanished also vanishes
from the next scrape instead of lingering at its last value.

Label values come only from bounded sets: targets of valid shape (at most `MAX_TARGETS`) and
the consumer groups of `prov:events` (at most `MAX_GROUPS`), so whoever can write a heartbeat
or create a group cannot grow the series without limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import redis.asyncio as aioredis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import ResponseError

from core.keys import AGENTS_GROUP, RedisKeys, is_valid_target

MAX_TARGETS: Final = 64
MAX_GROUPS: Final = 64
# When Redis cannot say a group's lag (entries were deleted under it), count the undelivered
# entries by reading them, but never more than this many per scrape.
LAG_SCAN_LIMIT: Final = 1000


@dataclass(frozen=True, slots=True)
class GroupStats:
    """One consumer group: entries not yet delivered to it, and delivered but not acked."""

    lag: int
    pending: int


@dataclass(frozen=True, slots=True)
class StreamStats:
    """Everything the stream gauges show, read in one scrape."""

    queues: Mapping[str, GroupStats]  # target -> its job stream, group `agents`
    waiting_retry: int
    integrations: Mapping[str, GroupStats]  # consumer group on `prov:events` -> its position


async def heartbeat_targets(client: aioredis.Redis, keys: RedisKeys) -> set[str]:
    """The targets named in the agents' heartbeats (`prov:agents`), valid names only."""
    beats = cast(list[bytes], await client.hvals(keys.agents))
    targets: set[str] = set()
    for raw in beats:
        try:
            beat = json.loads(raw)
        except ValueError:
            continue
        target = beat.get("target") if isinstance(beat, dict) else None
        if isinstance(target, str) and is_valid_target(target):
            targets.add(target)
    return targets


async def read_stream_stats(
    client: aioredis.Redis, keys: RedisKeys, targets: Iterable[str]
) -> StreamStats:
    """Read queue depth and pending per target, the retry count and every integration group."""
    chosen = sorted({t for t in targets if is_valid_target(t)})[:MAX_TARGETS]
    queues: dict[str, GroupStats] = {}
    for target in chosen:
        stream = keys.jobs_stream(target)
        length, groups = await _stream_groups(client, stream)
        agents = next((g for g in groups if _text(g.get("name")) == AGENTS_GROUP), None)
        if agents is None:
            # No agent ever read this stream: every entry in it is still to be delivered.
            queues[target] = GroupStats(lag=length, pending=0)
        else:
            queues[target] = await _group_stats(client, stream, agents, length)
    waiting = int(await client.zcard(keys.retry))
    length, groups = await _stream_groups(client, keys.events)
    named = sorted(groups, key=lambda g: _text(g.get("name")))[:MAX_GROUPS]
    integrations = {
        _text(group.get("name")): await _group_stats(client, keys.events, group, length)
        for group in named
    }
    return StreamStats(queues=queues, waiting_retry=waiting, integrations=integrations)


async def _stream_groups(
    client: aioredis.Redis, stream: str
) -> tuple[int, Sequence[Mapping[str, Any]]]:
    async with client.pipeline(transaction=False) as pipe:
        pipe.xlen(stream)
        pipe.xinfo_groups(stream)
        length, groups = await pipe.execute(raise_on_error=False)
    if isinstance(groups, ResponseError):
        if "no such key" in str(groups).lower():
            return 0, []
        raise groups
    if isinstance(length, Exception):
        raise length
    return int(length), cast(list[dict[str, Any]], groups)


async def _group_stats(
    client: aioredis.Redis, stream: str, group: Mapping[str, Any], length: int
) -> GroupStats:
    pending = int(group.get("pending") or 0)
    lag = group.get("lag")
    if lag is not None:
        return GroupStats(lag=int(lag), pending=pending)
    entries_read = group.get("entries-read")
    if entries_read is not None:
        return GroupStats(lag=max(length - int(entries_read), 0), pending=pending)
    # Neither is known: count what lies after the group's last delivered id, bounded.
    last = _text(group.get("last-delivered-id") or "0-0")
    after = await client.xrange(stream, min=f"({last}", max="+", count=LAG_SCAN_LIMIT)
    return GroupStats(lag=len(after or []), pending=pending)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


class StreamCollector(Collector):
    """Renders the last `StreamStats` handed to `update` (nothing before the first one)."""

    def __init__(self) -> None:
        self._stats: StreamStats | None = None

    def update(self, stats: StreamStats | None) -> None:
        """Show `stats` from now on; None (Redis did not answer) shows no stream gauges."""
        self._stats = stats

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families, without samples, so the registry knows the names up front."""
        return iter(_families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The families with the current snapshot's samples."""
        stats = self._stats
        if stats is None:
            return iter(())
        depth, pending, retry, lag, group_pending = _families()
        for target, queue in sorted(stats.queues.items()):
            depth.add_metric([target], queue.lag)
            pending.add_metric([target], queue.pending)
        retry.add_metric([], stats.waiting_retry)
        for group, position in sorted(stats.integrations.items()):
            lag.add_metric([group], position.lag)
            group_pending.add_metric([group], position.pending)
        return iter((depth, pending, retry, lag, group_pending))


def _families() -> tuple[
    GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily
]:
    return (
        GaugeMetricFamily(
            "provision_queue_depth",
            "Entries of a target's job stream not yet delivered to its agents.",
            labels=["target"],
        ),
        GaugeMetricFamily(
            "provision_queue_pending",
            "Entries of a target's job stream delivered to an agent and not yet acknowledged.",
            labels=["target"],
        ),
        GaugeMetricFamily(
            "provision_jobs_waiting_retry",
            "Jobs in retry_wait, scheduled for another attempt (all targets).",
        ),
        GaugeMetricFamily(
            "provision_integration_lag",
            "Events of the event stream not yet delivered to an integration's consumer group.",
            labels=["group"],
        ),
        GaugeMetricFamily(
            "provision_integration_pending",
            "Events delivered to an integration's consumer group and not yet acknowledged.",
            labels=["group"],
        ),
    )
