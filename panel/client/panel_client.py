"""An asyncio client of the panel's JSON API (docs/architecture.md §7, §8), for the client commands.

    async with PanelClient("http://127.0.0.1:8080", token=token) as panel:
        job = await panel.submit("hello-web", {"domain": "example.org"})
        async with contextlib.aclosing(panel.stream(job["job_id"])) as messages:
            async for kind, data, message_id in messages:
                ...

Every non-2xx answer raises an `ApiError` subclass chosen by its status, carrying the API's
`{error, message, errors}`; a panel that cannot be reached raises `PanelUnreachable` naming the
URL. The bearer token is sent on every request and never appears in an error or a `repr`.

Errors, under the project's root:

    ProvisionError
    └── PanelError                   talking to the panel failed
        ├── PanelUnreachable             no connection (refused, DNS, timeout)
        ├── PanelProtocolError           a 2xx answer that is not the API's JSON
        └── ApiError                     the panel answered 4xx/5xx (status, code, message, errors)
            ├── BadRequest                   400 malformed
            ├── Unauthorized                 401
            ├── Forbidden                    403
            ├── NotFound                     404
            ├── Conflict                     409
            ├── PayloadTooLarge              413
            ├── InvalidInputs                422 (errors: field -> message)
            └── ServerError                  5xx (503 unavailable included)
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, NamedTuple
from urllib.parse import quote

import aiohttp

from core.errors import ProvisionError
from core.runtime.settings import ClientSettings

TOKEN_FILE_NAME: Final = "admin.token"  # noqa: S105 (a file name, not a secret)
REQUEST_TIMEOUT_S: Final = 30.0
# The panel pings an open stream every 15 s (aiohttp-sse's default), so a read that waits
# much longer than that means the connection is dead, not that the job is quiet.
STREAM_READ_TIMEOUT_S: Final = 60.0
STREAM_CHUNK_BYTES: Final = 64 * 1024

InputValue = str | list[str]


class PanelError(ProvisionError):
    """Talking to the panel failed."""


class PanelUnreachable(PanelError):
    """No connection to the panel could be made (or it stopped answering)."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(
            f"cannot reach the panel at {url}: {problem} "
            "(is it running? PROV_PANEL_URL says where it is)"
        )


class PanelProtocolError(PanelError):
    """The panel answered, but not with what the API promises."""


class ApiError(PanelError):
    """The panel answered 4xx or 5xx; `code`, `message` and `errors` are the API's fields."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.errors = dict(errors or {})
        super().__init__(f"{status} {code}: {message}")


class BadRequest(ApiError):
    """400: the request was malformed."""


class Unauthorized(ApiError):
    """401: no valid token (set PROV_TOKEN)."""


class Forbidden(ApiError):
    """403: the token's role may not do this."""


class NotFound(ApiError):
    """404: no such app or job."""


class Conflict(ApiError):
    """409: the job already ended, or the app's manifest is invalid."""


class PayloadTooLarge(ApiError):
    """413: the request body is over the panel's limit."""


class InvalidInputs(ApiError):
    """422: some inputs are invalid; `errors` maps every bad field to a message."""


class ServerError(ApiError):
    """5xx: the panel failed, or its job store is unavailable (503)."""


_ERROR_BY_STATUS: Final[dict[int, type[ApiError]]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidInputs,
}


def error_for(status: int, body: object, text: str = "") -> ApiError:
    """The typed error of one 4xx/5xx answer, from its JSON body when it has the API's shape."""
    cls = _ERROR_BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        raw_errors = body.get("errors")
        errors = (
            {str(name): str(message) for name, message in raw_errors.items()}
            if isinstance(raw_errors, dict)
            else None
        )
        return cls(status, str(body.get("error") or "error"), body["message"], errors)
    # Not the panel's JSON (a proxy's error page, say): keep a short, single-line excerpt.
    excerpt = " ".join(text.split())[:200] or "no explanation given"
    return cls(status, "error", excerpt)


def token_of(settings: ClientSettings) -> str | None:
    """PROV_TOKEN, else the admin token `provision up` leaves in the data folder, else None."""
    if settings.token:
        return settings.token
    path = settings.data_dir / TOKEN_FILE_NAME
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as error:
        # A token file we may not read is worth saying so: silently going unauthenticated
        # would surface later as a puzzling 401.
        raise PanelError(f"cannot read the token file {path}: {error.strerror}") from None
    return token or None


class StreamMessage(NamedTuple):
    """One Server-Sent Events message: its event type, its data parsed as JSON, and its id."""

    kind: str
    data: object
    id: str | None


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One SSE message as the wire gave it (data not yet parsed)."""

    kind: str
    data: str
    id: str | None


_LINE_END: Final = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """An incremental Server-Sent Events parser (the WHATWG rules that matter here).

    Lines end with CRLF, LF or CR; `field: value` lines build a message and a blank line ends
    it; lines starting with `:` are comments (the panel's keep-alive pings); a message with no
    data is not dispatched. The text is fed in arbitrary chunks, so a line, or a CRLF, may be
    split across two of them.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._kind = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, text: str) -> list[RawMessage]:
        """Add text; return the messages it completes."""
        self._buffer += text
        messages: list[RawMessage] = []
        start = 0
        for match in _LINE_END.finditer(self._buffer):
            if match.group() == "\r" and match.end() == len(self._buffer):
                break  # maybe the first half of a CRLF: wait for the next chunk
            message = self._line(self._buffer[start : match.start()])
            start = match.end()
            if message is not None:
                messages.append(message)
        self._buffer = self._buffer[start:]
        return messages

    def _line(self, line: str) -> RawMessage | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._kind = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        # `retry` and unknown fields are ignored: reconnection is the caller's choice here.
        return None

    def _dispatch(self) -> RawMessage | None:
        kind, data = self._kind or "message", self._data
        self._kind, self._data = "", []
        if not data:
            return None
        # The id persists across messages (it is the stream's last id), as in EventSource.
        return RawMessage(kind=kind, data="\n".join(data), id=self._id)


class PanelClient:
    """The panel's JSON API over one aiohttp session; use it as an async context manager."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        """`base_url` is the panel's root (`http://host:port`); `token` a bearer token."""
        base = base_url.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", base):
            raise ValueError(f"the panel URL must start with http:// or https://, got {base!r}")
        self.base_url = base
        self._token = token
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        # Never the token: a repr ends up in tracebacks and logs.
        return f"PanelClient({self.base_url!r}, token={'set' if self._token else None})"

    async def __aenter__(self) -> PanelClient:
        """Open the HTTP session."""
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=self._timeout_s)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the HTTP session."""
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the API ---------------------------------------------------------------------------

    async def app(self, app_id: str) -> dict[str, Any]:
        """`GET /api/apps/<id>`: the app and its inputs."""
        return await self._request("GET", f"/api/apps/{_segment(app_id)}")

    async def submit(
        self, app_id: str, inputs: Mapping[str, InputValue], target: str | None = None
    ) -> dict[str, Any]:
        """`POST /api/install`: `{"job_id", "state": "queued"}`; InvalidInputs on 422."""
        body: dict[str, Any] = {"app_id": app_id, "inputs": dict(inputs)}
        if target is not None:
            body["target"] = target
        return await self._request("POST", "/api/install", json_body=body)

    async def job(self, job_id: str) -> dict[str, Any]:
        """`GET /api/jobs/<id>`: the job's snapshot."""
        return await self._request("GET", f"/api/jobs/{_segment(job_id)}")

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        """`GET /api/jobs/<id>/events`: every event of the job, in order."""
        body = await self._request("GET", f"/api/jobs/{_segment(job_id)}/events")
        return _list_of(body, "events")

    async def log(self, job_id: str, after: str | None = None) -> list[dict[str, Any]]:
        """`GET /api/jobs/<id>/log`: one page of output lines after the line id `after`."""
        params = {"after": after} if after else None
        body = await self._request("GET", f"/api/jobs/{_segment(job_id)}/log", params=params)
        return _list_of(body, "lines")

    async def jobs(
        self,
        filters: Mapping[str, str] | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """`GET /api/jobs`: `{"jobs": [...], "next_cursor"}`; filters: state, app, user, target."""
        params = {name: value for name, value in (filters or {}).items() if value}
        if cursor:
            params["cursor"] = cursor
        if limit is not None:
            params["limit"] = str(limit)
        return await self._request("GET", "/api/jobs", params=params)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """`POST /api/jobs/<id>/cancel`: `{"job_id", "state"}`; Conflict if it already ended."""
        return await self._request("POST", f"/api/jobs/{_segment(job_id)}/cancel")

    async def stream(
        self, job_id: str, last_event_id: str | None = None
    ) -> AsyncGenerator[StreamMessage, None]:
        """`GET /api/jobs/<id>/stream`: the job's events and log lines as they happen.

        Yields `(kind, data, id)` with `kind` "event" or "log" and `data` the parsed JSON. The
        panel keeps the stream open after the job ends, so the caller decides when to stop
        (on a terminal event) and should close the iterator (`contextlib.aclosing`). The
        iterator ends if the panel closes the connection; resume with the last id seen.
        """
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        # No overall deadline: a job may run for an hour. A dead connection shows up as a
        # read that outlasts several keep-alive pings.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout_s, sock_read=STREAM_READ_TIMEOUT_S
        )
        url = f"{self.base_url}/api/jobs/{_segment(job_id)}/stream"
        try:
            async with self._open().get(url, headers=headers, timeout=timeout) as response:
                if response.status >= 400:
                    raise await _error_of(response)
                parser = SSEParser()
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                # Chunks, not readline(): one event (a submit with large inputs) can be far
                # longer than aiohttp's line limit.
                async for chunk in response.content.iter_chunked(STREAM_CHUNK_BYTES):
                    for raw in parser.feed(decoder.decode(chunk)):
                        yield StreamMessage(raw.kind, _parse_data(raw), raw.id)
        except TimeoutError:
            raise PanelUnreachable(self.base_url, "the event stream went silent") from None
        except aiohttp.ClientPayloadError as error:
            raise PanelUnreachable(self.base_url, f"the event stream broke: {error}") from None
        except aiohttp.ClientConnectionError as error:
            raise PanelUnreachable(self.base_url, _connection_problem(error)) from None

    # -- plumbing --------------------------------------------------------------------------

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use PanelClient as `async with PanelClient(...) as panel:`")
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: object = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        try:
            async with self._open().request(method, url, json=json_body, params=params) as response:
                if response.status >= 400:
                    raise await _error_of(response)
                text = await response.text(errors="replace")
        except TimeoutError:
            raise PanelUnreachable(
                self.base_url, f"no answer within {self._timeout_s:g} s"
            ) from None
        except aiohttp.ClientConnectionError as error:
            raise PanelUnreachable(self.base_url, _connection_problem(error)) from None
        try:
            body = json.loads(text)
        except ValueError:
            raise PanelProtocolError(
                f"{method} {path}: the panel's answer is not JSON (is {self.base_url} the panel?)"
            ) from None
        if not isinstance(body, dict):
            raise PanelProtocolError(f"{method} {path}: expected a JSON object")
        return body


def _segment(value: str) -> str:
    # An id typed by a person must stay one path segment: "../x" or "a/b" is quoted.
    return quote(value, safe="")


def _list_of(body: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    items = body.get(name)
    if not isinstance(items, list):
        raise PanelProtocolError(f"expected a list under {name!r}")
    return [item for item in items if isinstance(item, dict)]


def _parse_data(raw: RawMessage) -> object:
    try:
        return json.loads(raw.data)
    except ValueError:
        raise PanelProtocolError(f"a {raw.kind!r} message's data is not JSON") from None


async def _error_of(response: aiohttp.ClientResponse) -> ApiError:
    text = await response.text(errors="replace")
    try:
        body: object = json.loads(text)
    except ValueError:
        body = None
    return error_for(response.status, body, text)


def _connection_problem(error: aiohttp.ClientConnectionError) -> str:
    if isinstance(error, aiohttp.ClientConnectorError):
        return error.strerror or str(error.os_error) or "connection failed"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the panel closed the connection"
    return str(error) or type(error).__name__
