"""Streams read as Redis stores them: flat field lists of bytes, a batch at a time.

The audit compares and digests the stored bytes themselves, and skipping redis-py's
conversion of each entry into a dict is most of the cost of reading a long history.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Final, cast

import redis.asyncio as aioredis

from core.text import as_text_lenient

# Entries per XRANGE: large enough that round trips vanish next to the checking, small enough
# to keep replies modest.
READ_BATCH: Final = 1000


def as_bytes(value: bytes | str) -> bytes:
    """The bytes a str answer (from a decoding client) stands for."""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def raw_client(client: aioredis.Redis) -> aioredis.Redis:
    """A client on the same connections whose XRANGE answers are left as hiredis gives them.

    redis-py turns each entry into a dict in Python; the audit wants the flat field list
    (the same bytes Redis digests), and skipping the conversion is most of the raw read cost.
    """
    raw = aioredis.Redis(connection_pool=client.connection_pool)
    raw.set_response_callback("XRANGE", lambda response, **_options: response)
    raw.set_response_callback("XREAD", lambda response, **_options: response)
    return raw


async def raw_batches(
    client: aioredis.Redis, key: str, *, start: str = "-", end: str = "+"
) -> AsyncIterator[list[tuple[str, list[bytes]]]]:
    """Every entry of a stream from `start` to `end` as (id, flat fields), a batch at a time."""
    raw = raw_client(client)
    low = start
    while True:
        batch = cast(list[list[Any]], await raw.xrange(key, min=low, max=end, count=READ_BATCH))
        if (
            batch
            and isinstance(batch[0][0], bytes)
            and batch[0][1]
            and isinstance(batch[0][1][0], bytes)
        ):
            # The usual answer (bytes): ids decoded, fields left as they came.
            yield [(stream_id.decode(), flat) for stream_id, flat in batch]
        else:
            # A client made with decode_responses gives str: the comparisons need the bytes.
            yield [
                (
                    as_text_lenient(stream_id),
                    flat if not flat or isinstance(flat[0], bytes) else [as_bytes(v) for v in flat],
                )
                for stream_id, flat in batch
            ]
        if len(batch) < READ_BATCH:
            return
        low = "(" + as_text_lenient(batch[-1][0])


async def raw_entries(
    client: aioredis.Redis, key: str, *, start: str = "-", end: str = "+"
) -> AsyncIterator[tuple[str, list[bytes]]]:
    """Every entry of a stream from `start` to `end` as (id, flat fields)."""
    async for batch in raw_batches(client, key, start=start, end=end):
        for entry in batch:
            yield entry


async def prefetched(
    batches: AsyncIterator[list[tuple[str, list[bytes]]]], depth: int = 2
) -> AsyncIterator[list[tuple[str, list[bytes]]]]:
    """`batches`, read ahead by a task so the next one is on its way while one is checked."""
    queue: asyncio.Queue[list[tuple[str, list[bytes]]] | None] = asyncio.Queue(maxsize=depth)

    async def pump() -> None:
        try:
            async for batch in batches:
                await queue.put(batch)
        finally:
            await queue.put(None)

    reader = asyncio.create_task(pump())
    try:
        while (batch := await queue.get()) is not None:
            yield batch
        await reader  # re-raises a read error
    finally:
        reader.cancel()
