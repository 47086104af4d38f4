"""structlog, configured once per process: JSON lines when not on a terminal, readable otherwise.

Tracebacks never include local variables: a local may hold a secret.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def log_format_from(value: str | None) -> bool | None:
    """`PROV_LOG_FORMAT` (json | console | color) as configure_logging's `json`.

    None (unset) picks JSON unless on a terminal.
    """
    return {"json": True, "console": False, "color": False}.get((value or "").strip().lower())


def log_colors_from(value: str | None) -> bool | None:
    """Whether `PROV_LOG_FORMAT` asks for colours (`color`); None picks by tty."""
    return True if (value or "").strip().lower() == "color" else None


def configure_logging(
    *,
    level: str = "info",
    json: bool | None = None,
    colors: bool | None = None,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for this process; None picks JSON and colours by tty."""
    out = stream if stream is not None else sys.stderr
    use_json = (not out.isatty()) if json is None else json
    use_colors = out.isatty() if colors is None else colors
    renderer: structlog.typing.Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        exception_processor: list[structlog.typing.Processor] = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        ]
    else:
        # plain_traceback never prints local variables (rich's formatter would, by default).
        renderer = structlog.dev.ConsoleRenderer(
            colors=use_colors, exception_formatter=structlog.dev.plain_traceback
        )
        exception_processor = []
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *exception_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
