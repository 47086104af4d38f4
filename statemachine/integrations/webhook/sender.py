"""One signed HTTP POST of one event, and what came of it (`Outcome`); never raises for HTTP.

The body is the event as the API shows it (`Event.as_dict()`), as canonical JSON, and
`X-Provision-Signature` signs it when a secret is configured. `Idempotency-Key: <event_id>`
repeats the body's `event_id` for convenience; the signature does not cover headers, so a
receiver drops the copies at-least-once delivery brings by the signed body's `event_id`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import aiohttp

from core import __version__
from core.signing import canonical_bytes
from statemachine.events import Event
from statemachine.integrations.webhook.policy import Outcome, parse_retry_after
from statemachine.integrations.webhook.signature import SIGNATURE_HEADER, signature_header

USER_AGENT: Final = f"provision-webhook/{__version__}"
# Enough of an error answer to tell a person what went wrong, bounded so a receiver's page
# (which might echo something private) never fills logs or the dead-letter stream.
ERROR_SNIPPET_CHARS: Final = 200


def event_body(event: Event) -> bytes:
    """The request body: the event's API shape as canonical JSON."""
    return canonical_bytes(event.as_dict())


def _snippet(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")[:ERROR_SNIPPET_CHARS]
    return "".join(char if char.isprintable() else " " for char in text).strip()


class WebhookSender:
    """POSTs events to one URL with one session (connections are reused)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        secret: bytes | None,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._url = url
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock

    def headers(self, event: Event, body: bytes) -> dict[str, str]:
        """The request headers for `event` with this `body`."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Idempotency-Key": event.event_id,
            "X-Provision-Event": event.trigger,
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = signature_header(
                self._secret, body, timestamp=int(self._clock())
            )
        return headers

    async def send(self, event: Event) -> Outcome:
        """POST `event` once; the status, or why no answer came."""
        body = event_body(event)
        try:
            async with self._session.post(
                self._url,
                data=body,
                headers=self.headers(event, body),
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                if 200 <= response.status <= 299:
                    return Outcome(response.status)
                snippet = _snippet(await response.content.read(ERROR_SNIPPET_CHARS))
                return Outcome(
                    response.status,
                    error=snippet,
                    retry_after_s=parse_retry_after(
                        response.headers.get("Retry-After"), now=self._clock()
                    ),
                )
        except TimeoutError:
            return Outcome(None, error="timeout")
        except (aiohttp.ClientError, OSError) as error:
            # The class names the failure (refused, reset, DNS); the message may carry the
            # URL, which can hold credentials, so it is left out.
            return Outcome(None, error=type(error).__name__)
        except Exception as error:
            # Whatever else one answer can provoke (a header no parser foresaw) is a bad
            # answer, retried like no answer: raising would stop the forwarder, and a
            # restarted one would get the same event and the same answer again.
            return Outcome(None, error=f"unreadable answer: {type(error).__name__}")
