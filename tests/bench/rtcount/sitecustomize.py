"""Counts the Redis round trips of a real `provision` process, for the Redis cost benchmark.

Put on PYTHONPATH with BENCH_RT_FILE set, Python imports this before the program: it wraps
redis-py's asyncio connection so that every packed send (one command, or one whole pipeline,
whose commands pack_commands packs one by one with pack_command) is one round trip, recorded
with its time and the first words of its commands. The records are written to BENCH_RT_FILE
as JSON lines when the process exits.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from typing import Any

from redis.asyncio.connection import AbstractConnection

_path = os.environ.get("BENCH_RT_FILE")
_pending: list[list[str]] = []
_trips: list[dict[str, Any]] = []


def _describe(args: tuple[Any, ...]) -> list[str]:
    def text(value: Any) -> str:
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

    return [text(value)[:80] for value in args[:4]]


_pack_command = AbstractConnection.pack_command
_send_packed = AbstractConnection.send_packed_command


def pack_command(self: AbstractConnection, *args: Any) -> Any:
    _pending.append(_describe(args))
    return _pack_command(self, *args)


async def send_packed_command(
    self: AbstractConnection, command: Any, check_health: bool = True
) -> None:
    names = list(_pending)
    _pending.clear()
    _trips.append({"t": time.time(), "cmds": names})
    await _send_packed(self, command, check_health)


def _dump() -> None:
    if _path:
        with open(_path, "w", encoding="utf-8") as out:
            for trip in _trips:
                out.write(json.dumps(trip) + "\n")


if _path:
    AbstractConnection.pack_command = pack_command  # type: ignore[method-assign]
    AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]
    atexit.register(_dump)
