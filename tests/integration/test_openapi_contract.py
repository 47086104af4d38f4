"""The OpenAPI document against the live panel: schemathesis generates requests from it.

Every answer must match the document (status, content type, body schema) and none may be a
5xx, whatever the input. The panel runs for real on a TCP port (in a thread with its own
event loop), backed by the launcher's Redis.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings

from core.runtime.settings import PanelSettings
from panel.app import create_app
from panel.web.openapi import openapi_document
from tests.agent_support import make_ring, write_app
from tests.auth_support import bearer, make_token

pytestmark = pytest.mark.redis

schema = schemathesis.openapi.from_dict(openapi_document()).exclude(path_regex=r"/stream$")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LivePanel:
    """The panel served from a background thread until `stop()`."""

    def __init__(self, app: web.Application, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._app = app
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "the panel did not start"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def live_panel(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    root: Path = tmp_path_factory.mktemp("contract")
    installers = root / "installers"
    write_app(
        installers,
        "hello",
        "exit 0",
        inputs=[
            {"name": "port", "type": "port", "default": 8080},
            {"name": "secret", "type": "password"},
        ],
    )
    ring = make_ring(root / "hmac.keys")
    settings_ = PanelSettings.from_env(
        {
            "PROV_REDIS_URL": redis_url,
            "PROV_NAMESPACE": "contract",
            "PROV_INSTALLERS_DIR": str(installers),
            "PROV_HMAC_KEYS_FILE": str(root / "hmac.keys"),
            # Generated requests come fast; the submission limit is tested elsewhere.
            "PROV_SUBMISSIONS_PER_MINUTE": "100000",
            "PROV_MAX_UNFINISHED_PER_USER": "100000",
        }
    )
    panel = LivePanel(create_app(settings_, ring=ring), _free_port())
    panel.start()
    token = asyncio.run(make_token(redis_url, "contract"))
    yield panel.url, token
    panel.stop()


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_answer_matches_the_openapi_document_and_none_is_a_server_error(
    case: schemathesis.Case, live_panel: tuple[str, str]
) -> None:
    url, token = live_panel
    case.call_and_validate(base_url=url, headers=bearer(token))
