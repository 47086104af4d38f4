"""Write an installer's output to the job's log stream: redacted, batched, and capped.

docs/architecture.md §8 caps a job's log at 5 MiB or 20,000 lines, "the first and last halves kept,
the
middle counted". The head is written as it comes. Once it is full a notice line is written,
and from then on every new line is still streamed (the operator watches the latest output
live), while the oldest tail entries beyond the tail half are deleted (XDEL), so the stream
stays within the cap at every moment, not only at the end (the two notice lines count
against it too). `close()` writes how much was dropped, or, when the tail never overflowed
and nothing was dropped after all, deletes the notice again. Sizes are the UTF-8 bytes of
the lines. Memory stays O(batch + ids of the tail entries), whatever the script prints.

    head (first half, as written) | notice | tail (latest lines, sliding) | count
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Literal

import redis.asyncio
import structlog
from redis.typing import EncodableT, FieldT
from structlog.typing import FilteringBoundLogger

from agent.redaction import Redactor
from agent.sandbox import TRUNCATION_SUFFIX

STREAMS = ("stdout", "stderr")
TRUNCATED_NOTICE = (
    "[provision] output truncated: the middle of the log is dropped, the last lines follow"
)
# The notices are not output of the script; they go to stderr, since docs/architecture.md §4 allows
# only
# stdout and stderr in the `stream` field and they are about the log, not its data.
NOTICE_STREAM = "stderr"
# Room kept in the tail's byte budget for the final count line, whose digits are not known
# until the end.
_COUNT_NOTICE_RESERVE_BYTES = 128

log: FilteringBoundLogger = structlog.get_logger()


def omitted_notice(lines: int, size: int) -> str:
    """The last line of a capped log: how much of its middle was dropped."""
    return f"[provision] {lines} lines ({size} bytes) omitted from the middle of the log"


@dataclass(slots=True)
class _Pending:
    """A line accepted by `add` and not yet sent to Redis."""

    stream: str
    data: bytes
    kind: Literal["head", "notice", "tail"]


class JobLogWriter:
    """Writes one attempt's output lines to the log stream `key`, redacted and capped.

    The stream may already hold the lines of earlier attempts of the same job (the `attempt`
    field tells them apart); the cap applies to what this writer, one attempt, writes.
    `add` may be called from several tasks (stdout and stderr); always `close()` at the end.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        key: str,
        *,
        attempt: int,
        redactor: Redactor,
        max_lines: int = 20_000,
        max_bytes: int = 5 * 1024 * 1024,
        batch_lines: int = 200,
        flush_interval_s: float = 0.2,
    ) -> None:
        if max_lines < 4:
            raise ValueError(f"max_lines must be at least 4 (head, notices, tail), got {max_lines}")
        if batch_lines < 1:
            raise ValueError(f"batch_lines must be at least 1, got {batch_lines}")
        notices_bytes = len(TRUNCATED_NOTICE.encode()) + _COUNT_NOTICE_RESERVE_BYTES
        if max_bytes < 2 * notices_bytes:
            raise ValueError(f"max_bytes must be at least {2 * notices_bytes}, got {max_bytes}")
        self._client = client
        self._key = key
        self._attempt = str(attempt).encode()
        self._redactor = redactor
        self._batch_lines = batch_lines
        self._flush_interval_s = flush_interval_s
        # The two notices count against the cap, so the stream never exceeds it.
        self._head_max_lines = max_lines // 2
        self._head_max_bytes = max_bytes // 2
        self._tail_max_lines = max_lines - self._head_max_lines - 2
        self._tail_max_bytes = max_bytes - self._head_max_bytes - notices_bytes

        self._head_lines = 0
        self._head_bytes = 0
        self._in_head = True
        self._tail: deque[tuple[bytes, int]] = deque()  # (entry id, line bytes), oldest first
        self._tail_bytes = 0
        self._notice_id: bytes | None = None
        self._omitted_lines = 0
        self._omitted_bytes = 0

        self._pending: list[_Pending] = []
        # One flush at a time, in order: entry ids must follow the order of the lines.
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None  # set while a timed flush is due
        self._background: set[asyncio.Task[None]] = set()
        self._failure: Exception | None = None  # of a timed flush, raised by the next call
        self._closed = False

    @property
    def omitted_lines(self) -> int:
        """Lines dropped from the middle of the log so far."""
        return self._omitted_lines

    @property
    def omitted_bytes(self) -> int:
        """Bytes of the lines dropped from the middle of the log so far."""
        return self._omitted_bytes

    async def add(self, stream: str, line: str) -> None:
        """Redact `line` and queue it; waits for Redis when a batch is full (backpressure)."""
        if self._closed:
            raise RuntimeError("the job log writer is closed")
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
        self._raise_failure()
        if line.endswith(TRUNCATION_SUFFIX):
            body = line[: -len(TRUNCATION_SUFFIX)]
            text = self._redactor.redact_truncated(body) + TRUNCATION_SUFFIX
        else:
            text = self._redactor.redact(line)
        self._accept(stream, text.encode("utf-8", "replace"))
        if len(self._pending) >= self._batch_lines:
            await self._flush()
        elif self._timer is None:
            # Lines must not wait for a full batch when the script prints slowly. A timer,
            # not a sleeping task: most jobs end before it fires, and it costs less to drop.
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._flush_interval_s, self._start_timed_flush)

    async def close(self) -> None:
        """Write what is queued and, if the middle was dropped, the count of what was."""
        if self._closed:
            return
        await self._stop_taking_lines()
        # Write what is left even after a timed flush failed; that failure is raised below.
        failure, self._failure = self._failure, None
        await self._flush()
        if self._omitted_lines:
            notice = omitted_notice(self._omitted_lines, self._omitted_bytes)
            await self._client.xadd(self._key, self._fields(NOTICE_STREAM, notice.encode()))
        elif self._notice_id is not None:
            # The head filled up but the tail never overflowed: nothing was dropped after
            # all, and a notice saying otherwise would mislead whoever reads the log later.
            await self._client.xdel(self._key, self._notice_id)
        log.debug(
            "joblog.closed",
            omitted_lines=self._omitted_lines,
            omitted_bytes=self._omitted_bytes,
        )
        if failure is not None:
            raise failure

    async def close_handing_over(self) -> list[dict[str, str]]:
        """Close, and hand the lines still queued to the caller's own atomic step.

        A short job's output is usually still queued when it exits. Its entries (the fields
        of each, in order) are then written in the same step as the job's outcome: one round
        trip less, and whoever sees the outcome sees the whole log. That holds only while
        nothing was cut from the log (no notice, no tail to trim); otherwise this writes as
        `close` does and hands over nothing. The caller must write what it gets, in order,
        even when its step fails.
        """
        if self._closed or not self._in_head:
            await self.close()
            return []
        await self._stop_taking_lines()
        failure, self._failure = self._failure, None
        if failure is not None:
            # What that flush carried is lost (the log is best effort); what came after
            # is still handed over.
            log.warning("joblog.flush_failed_earlier", error=repr(failure))
        async with self._lock:  # after any flush in progress, so the order holds
            batch, self._pending = self._pending, []
        # Head lines only (the head never filled up): UTF-8 by construction, see `add`.
        return [
            {"stream": item.stream, "line": item.data.decode(), "attempt": self._attempt.decode()}
            for item in batch
        ]

    async def _stop_taking_lines(self) -> None:
        """Closed from now on: drop the flush timer (what it would flush is flushed by the
        closer) and let a flush already running end, so the order of entries holds."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._background:
            await asyncio.wait(self._background)

    def _accept(self, stream: str, data: bytes) -> None:
        """Queue one line as head or tail, opening the tail with the notice when needed."""
        size = len(data)
        if self._in_head:
            if (
                self._head_lines < self._head_max_lines
                and self._head_bytes + size <= self._head_max_bytes
            ):
                self._head_lines += 1
                self._head_bytes += size
                self._pending.append(_Pending(stream, data, "head"))
                return
            self._in_head = False
            self._pending.append(_Pending(NOTICE_STREAM, TRUNCATED_NOTICE.encode(), "notice"))
        self._pending.append(_Pending(stream, data, "tail"))

    def _start_timed_flush(self) -> None:
        """The timer fired: flush in the background, so a slow trickle shows up promptly."""
        self._timer = None
        task = asyncio.ensure_future(self._timed_flush())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _timed_flush(self) -> None:
        try:
            await self._flush()
        except Exception as exc:  # kept for the caller's next add() or close() to raise
            log.warning("joblog.flush_failed", error=repr(exc))
            self._failure = exc

    def _raise_failure(self) -> None:
        """Raise, once, what a timed flush ran into."""
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    async def _flush(self) -> None:
        """Send the queued lines in one pipeline, deleting the tail entries they push out."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            new_tail_sizes = [len(item.data) for item in batch if item.kind == "tail"]
            excess_lines = len(self._tail) + len(new_tail_sizes) - self._tail_max_lines
            excess_bytes = self._tail_bytes + sum(new_tail_sizes) - self._tail_max_bytes
            # Oldest first: the written tail, then lines of this batch that would be deleted
            # as soon as written, which are simply not sent.
            evicted: list[bytes] = []
            while (excess_lines > 0 or excess_bytes > 0) and self._tail:
                entry_id, size = self._tail.popleft()
                self._tail_bytes -= size
                evicted.append(entry_id)
                excess_lines, excess_bytes = excess_lines - 1, excess_bytes - size
                self._count_omitted(size)
            unsent = 0
            for size in new_tail_sizes:
                if excess_lines <= 0 and excess_bytes <= 0:
                    break
                unsent += 1
                excess_lines, excess_bytes = excess_lines - 1, excess_bytes - size
                self._count_omitted(size)
            sent: list[_Pending] = []
            for item in batch:
                if item.kind == "tail" and unsent:
                    unsent -= 1
                    continue
                sent.append(item)
            pipe = self._client.pipeline(transaction=False)
            for item in sent:
                pipe.xadd(self._key, self._fields(item.stream, item.data))
            if evicted:
                pipe.xdel(self._key, *evicted)
            replies = await pipe.execute()
            for item, entry_id in zip(sent, replies, strict=False):
                if item.kind == "tail":
                    self._tail.append((entry_id, len(item.data)))
                    self._tail_bytes += len(item.data)
                elif item.kind == "notice":
                    self._notice_id = entry_id

    def _count_omitted(self, size: int) -> None:
        """Count one line dropped from the middle."""
        self._omitted_lines += 1
        self._omitted_bytes += size

    def _fields(self, stream: str, data: bytes) -> dict[FieldT, EncodableT]:
        """The fields of one log entry (docs/architecture.md §4)."""
        return {"stream": stream, "line": data, "attempt": self._attempt}
