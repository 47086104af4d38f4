"""`provision panel`: serve the web panel and its API in the foreground."""

from __future__ import annotations

import ipaddress
import os
import socket

import click
import structlog
from aiohttp import web

from core.errors import KeyRingError, SettingsError
from core.runtime.logging_setup import configure_logging, log_colors_from, log_format_from
from core.runtime.settings import PanelSettings, redis_url_or_local

log = structlog.get_logger("panel")


def is_loopback(host: str) -> bool:
    """Whether `host` only ever reaches this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            return False
        return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


@click.command("panel")
@click.option("--host", default=None, help="Address to listen on (PROV_PANEL_HOST).")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="PROV_PANEL_PORT.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    envvar="PROV_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def panel_command(host: str | None, port: int | None, log_level: str) -> None:
    """Serve the web panel and the JSON API."""
    # Imported here so other commands never load the web stack.
    from panel.app import create_app  # noqa: PLC0415

    log_format = os.environ.get("PROV_LOG_FORMAT")
    configure_logging(
        level=log_level, json=log_format_from(log_format), colors=log_colors_from(log_format)
    )
    try:
        settings = PanelSettings.from_env(os.environ)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    listen_host = host or settings.host
    listen_port = port or settings.port
    if not is_loopback(listen_host) and not settings.cookie_secure:
        # Passwords, session cookies and tokens would cross the network in clear.
        log.warning(
            "panel.plain_http_on_network",
            host=listen_host,
            advice="serve it behind a TLS reverse proxy and set PROV_COOKIE_SECURE=true",
        )
    try:
        # The one resolver every command uses, so the panel finds the Redis `provision up`
        # started in the same data folder.
        app = create_app(settings, redis_url=redis_url_or_local(settings.common))
    except (KeyRingError, SettingsError) as error:
        raise click.ClickException(str(error)) from None
    log.info("panel.listening", url=f"http://{listen_host}:{listen_port}")
    web.run_app(
        app,
        host=listen_host,
        port=listen_port,
        print=None,
        access_log=None,
        shutdown_timeout=5.0,
    )
