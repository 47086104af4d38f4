"""Fixtures of the chaos suite: isolated worlds (Redis, panel, agents), torn down after."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import Chaos

WorldFactory = Callable[..., Awaitable[Chaos]]


@pytest.fixture
async def make_world(tmp_path: Path) -> AsyncIterator[WorldFactory]:
    """Start a world with Redis and the panel (`Chaos` keyword arguments); agents are the
    test's to start."""
    worlds: list[Chaos] = []

    async def make(**options: Any) -> Chaos:
        chaos = Chaos(tmp_path, **options)
        worlds.append(chaos)
        await chaos.start()
        return chaos

    yield make
    for chaos in worlds:
        await chaos.close()
