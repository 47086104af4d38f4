"""`provision agent`: run the agent daemon in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import TYPE_CHECKING

import click
import structlog

from core.cli.keys import resolve_keys_file
from core.errors import DutyFailed, KeyRingError, SettingsError
from core.keyring import keyfile_mode_problem
from core.keys import RedisKeys
from core.runtime.keyring_file import KeyRingFile
from core.runtime.logging_setup import configure_logging, log_colors_from, log_format_from
from core.runtime.redis_conn import check_durability, connect_with_patience
from core.runtime.settings import AgentSettings, redis_url_or_local

if TYPE_CHECKING:
    from aiohttp import web

log = structlog.get_logger("agent")


@click.command("agent")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    envvar="PROV_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--metrics-addr",
    default=None,
    metavar="HOST:PORT",
    help="Serve Prometheus /metrics here, without auth: keep it on loopback "
    "(PROV_AGENT_METRICS_ADDR; default off).",
)
def agent_command(log_level: str, metrics_addr: str | None) -> None:
    """Take signed jobs from Redis and run their installers (runs as root)."""
    log_format = os.environ.get("PROV_LOG_FORMAT")
    configure_logging(
        level=log_level, json=log_format_from(log_format), colors=log_colors_from(log_format)
    )
    environ = dict(os.environ)
    if metrics_addr is not None:
        environ["PROV_AGENT_METRICS_ADDR"] = metrics_addr
    try:
        settings = AgentSettings.from_env(environ)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    keys_file, _default = resolve_keys_file(None, settings.common)
    try:
        ring = KeyRingFile(keys_file)
    except (KeyRingError, OSError) as error:
        raise click.ClickException(
            f"cannot read the key ring {keys_file}: {error} "
            "(set PROV_HMAC_KEYS_FILE, or create one with `provision keys new`)"
        ) from None
    if (problem := keyfile_mode_problem(keys_file)) is not None:
        log.warning("keys.file_mode", path=str(keys_file), problem=problem)
    try:
        url = redis_url_or_local(settings.common)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    asyncio.run(_serve(settings, ring, url=url))


async def _serve(settings: AgentSettings, ring: KeyRingFile, *, url: str) -> None:
    # Imported here so `provision --help` and other commands never load the daemon.
    from agent.sandbox import reap_children_by_pidfd  # noqa: PLC0415
    from agent.worker import Agent  # noqa: PLC0415

    reap_children_by_pidfd()
    client = await connect_with_patience(url, log, event="agent.redis_unreachable")
    metrics_server: web.AppRunner | None = None
    try:
        await check_durability(client, log)
        agent = Agent(settings, client, ring.current)
        if settings.metrics_addr is not None:
            # Only then: aiohttp is a tenth of the agent's memory (about 9 MiB of 60).
            from agent.metrics_server import start_metrics_server  # noqa: PLC0415

            host, port = settings.metrics_addr
            keys = RedisKeys(settings.common.namespace)
            try:
                metrics_server = await start_metrics_server(
                    agent.metrics, client, keys, settings.target, host=host, port=port
                )
            except OSError as error:
                raise click.ClickException(
                    f"cannot serve metrics on {host}:{port}: {error}"
                ) from None
        loop = asyncio.get_running_loop()
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            log.info("agent.signal", signal=signal.Signals(signum).name, count=signals_seen)
            # The first signal drains gracefully; a second one stops at once.
            agent.stop(immediate=signals_seen > 1)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await agent.run()
        except DutyFailed as error:
            # Exit non-zero, so systemd (Restart=on-failure) starts a fresh agent.
            raise click.ClickException(str(error)) from None
    finally:
        if metrics_server is not None:
            await metrics_server.cleanup()
        await client.aclose()
