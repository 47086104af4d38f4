"""The floor of the HTTP benchmarks: a minimal aiohttp server answering a constant.

    .venv/bin/python -m tests.bench.constant_server PORT

Run as its own process like `provision panel`, with the same `web.run_app` and no access log,
so the difference between the two is the panel's own work per request.
"""

from __future__ import annotations

import sys

from aiohttp import web

_BODY = b'{"job_id": "01JCONSTANTCONSTANTCONSTANT", "state": "queued"}'


async def constant(_request: web.Request) -> web.Response:
    """The same small JSON answer to every request."""
    return web.Response(body=_BODY, content_type="application/json")


def main() -> None:
    """Serve the constant on 127.0.0.1:PORT until SIGTERM."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", constant)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
