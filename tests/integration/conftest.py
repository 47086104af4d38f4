"""Fixtures shared by the integration tests that run agents: an empty installers folder, a
key ring on disk, the event store, and real `provision agent` processes.

A test module that needs other apps or another ring defines its own fixture of the same name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.keyring import KeyRing
from statemachine.store import EventStore
from tests.agent_support import AgentProcess, agent_environ, make_ring


@pytest.fixture
def installers(tmp_path: Path) -> Path:
    path = tmp_path / "installers"
    path.mkdir()
    return path


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return make_ring(tmp_path / "hmac.keys")


@pytest.fixture
def store(redis_client, redis_keys, ring) -> EventStore:
    return EventStore(redis_client, redis_keys, ring)


@pytest.fixture
def spawn(tmp_path, redis_url, namespace, installers) -> Iterator[Callable[..., AgentProcess]]:
    """Start real agents (`spawn("a1", PROV_X="...")`); every one is killed at the end."""
    processes: list[AgentProcess] = []

    def start(agent_id: str, **extra: str) -> AgentProcess:
        env = agent_environ(
            redis_url=redis_url,
            namespace=namespace,
            keys_file=tmp_path / "hmac.keys",
            installers=installers,
            agent_id=agent_id,
            **extra,
        )
        processes.append(AgentProcess(env, tmp_path / f"{agent_id}.log"))
        return processes[-1]

    yield start
    for process in processes:
        process.close()
