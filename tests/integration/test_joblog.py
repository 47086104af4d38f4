"""The job log writer against a real Redis: fields, redaction, the cap, and a flood."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import time
from uuid import uuid4

import pytest

from agent.joblog import TRUNCATED_NOTICE, JobLogWriter, omitted_notice
from agent.redaction import Redactor
from agent.sandbox import TRUNCATION_SUFFIX, run_installer
from core.retry import Exited

pytestmark = pytest.mark.redis

CANARY = "canary-Pa55w0rd!"


@pytest.fixture
def key(redis_keys):
    return redis_keys.job_log("j1")


async def entries(client, key) -> list[dict[str, str]]:
    return [
        {name.decode(): value.decode() for name, value in fields.items()}
        for _id, fields in await client.xrange(key)
    ]


def writer_for(client, key, **options) -> JobLogWriter:
    options.setdefault("redactor", Redactor([CANARY]))
    return JobLogWriter(client, key, attempt=options.pop("attempt", 1), **options)


async def test_lines_are_stored_with_their_stream_and_attempt(redis_client, key):
    writer = writer_for(redis_client, key, attempt=2)
    await writer.add("stdout", "hello")
    await writer.add("stderr", "warning: something")
    await writer.add("stdout", "")
    await writer.close()
    assert await entries(redis_client, key) == [
        {"stream": "stdout", "line": "hello", "attempt": "2"},
        {"stream": "stderr", "line": "warning: something", "attempt": "2"},
        {"stream": "stdout", "line": "", "attempt": "2"},
    ]


async def test_a_few_lines_show_up_without_waiting_for_a_full_batch(redis_client, key):
    writer = writer_for(redis_client, key, batch_lines=200, flush_interval_s=0.05)
    await writer.add("stdout", "progress 1")
    deadline = time.monotonic() + 5
    while await redis_client.xlen(key) < 1:
        assert time.monotonic() < deadline, "the line was never flushed"
        await asyncio.sleep(0.01)
    await writer.close()
    assert await redis_client.xlen(key) == 1


async def test_secrets_are_redacted_before_anything_is_stored(redis_client, key):
    writer = writer_for(redis_client, key)
    await writer.add("stdout", f"password={CANARY}")
    await writer.add("stderr", f"url=https://u:{CANARY.replace('!', '%21')}@host/")
    await writer.add("stdout", "x" * 20 + CANARY[:-2] + TRUNCATION_SUFFIX)
    await writer.close()
    stored = await entries(redis_client, key)
    assert [entry["line"] for entry in stored] == [
        "password=***",
        "url=https://u:***@host/",
        "x" * 20 + "***" + TRUNCATION_SUFFIX,
    ]
    raw = await redis_client.xrange(key)
    assert all(CANARY[:-2].encode() not in value for _id, f in raw for value in f.values())


async def test_unknown_stream_names_are_refused(redis_client, key):
    writer = writer_for(redis_client, key)
    with pytest.raises(ValueError, match="stream"):
        await writer.add("system", "hello")
    await writer.close()


async def test_the_line_cap_keeps_the_head_and_a_sliding_tail_and_counts_the_middle(
    redis_client, key
):
    writer = writer_for(redis_client, key, max_lines=100, batch_lines=7)
    for number in range(1000):
        await writer.add("stdout", f"line {number}")
        # Bounded while the script runs, not only at the end.
        if number % 97 == 0:
            assert await redis_client.xlen(key) <= 100
    await writer.close()
    lines = [entry["line"] for entry in await entries(redis_client, key)]
    assert len(lines) <= 100
    assert lines[:50] == [f"line {n}" for n in range(50)]
    assert lines[50] == TRUNCATED_NOTICE
    tail = lines[51:-1]
    assert 0 < len(tail) <= 50
    assert tail == [f"line {n}" for n in range(1000 - len(tail), 1000)]
    omitted = 1000 - 50 - len(tail)
    omitted_bytes = sum(len(f"line {n}") for n in range(50, 1000 - len(tail)))
    assert lines[-1] == omitted_notice(omitted, omitted_bytes)
    assert writer.omitted_lines == omitted


async def test_the_byte_cap_applies_as_well(redis_client, key):
    line = "y" * 99
    writer = writer_for(redis_client, key, max_lines=20_000, max_bytes=20_000)
    for _ in range(1000):
        await writer.add("stderr", line)
    await writer.close()
    stored = await entries(redis_client, key)
    total = sum(len(entry["line"].encode()) for entry in stored)
    assert total <= 20_000
    assert sum(entry["line"] == line for entry in stored[:101]) == 10_000 // 99
    assert stored[10_000 // 99]["line"] == TRUNCATED_NOTICE
    assert stored[-1]["line"].startswith("[provision] ")
    assert stored[-2]["line"] == line


async def test_no_notice_is_left_when_the_tail_never_overflowed(redis_client, key):
    writer = writer_for(redis_client, key, max_lines=100)
    for number in range(70):
        await writer.add("stdout", f"line {number}")
    await writer.close()
    lines = [entry["line"] for entry in await entries(redis_client, key)]
    assert lines == [f"line {n}" for n in range(70)]
    assert writer.omitted_lines == 0


async def test_earlier_attempts_in_the_stream_are_left_alone(redis_client, key):
    first = writer_for(redis_client, key, attempt=1, max_lines=10)
    for number in range(5):
        await first.add("stdout", f"first {number}")
    await first.close()
    second = writer_for(redis_client, key, attempt=2, max_lines=10)
    for number in range(50):
        await second.add("stdout", f"second {number}")
    await second.close()
    stored = await entries(redis_client, key)
    assert [e["line"] for e in stored if e["attempt"] == "1"] == [f"first {n}" for n in range(5)]
    assert len([e for e in stored if e["attempt"] == "2"]) <= 10


async def test_a_failed_timed_flush_is_raised_by_the_next_call(redis_client, key, monkeypatch):
    real_pipeline = redis_client.pipeline
    failures = [ConnectionError("redis went away")]

    def flaky_pipeline(*args, **kwargs):
        pipe = real_pipeline(*args, **kwargs)
        if failures:
            error = failures.pop()

            async def execute(*_args, **_kwargs):
                raise error

            pipe.execute = execute
        return pipe

    monkeypatch.setattr(redis_client, "pipeline", flaky_pipeline)
    writer = writer_for(redis_client, key, flush_interval_s=0.01)
    await writer.add("stdout", "lost with the failed flush")
    await asyncio.sleep(0.2)
    with pytest.raises(ConnectionError, match="went away"):
        await writer.add("stdout", "refused: the failure is reported first")
    await writer.add("stdout", "written")
    await writer.close()
    assert [entry["line"] for entry in await entries(redis_client, key)] == ["written"]


async def test_add_after_close_is_an_error(redis_client, key):
    writer = writer_for(redis_client, key)
    await writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        await writer.add("stdout", "late")


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
async def test_a_300_mb_flood_stays_within_the_cap_and_in_bounded_memory(
    redis_client, key, tmp_path
):
    job_id = f"job-{uuid4().hex}"
    script = tmp_path / "flood.sh"
    script.write_text(
        f"echo 'start {CANARY}'\n"
        # 1.5 million lines of 200 characters: 301.5 MB.
        "yes \"$(head -c 200 /dev/zero | tr '\\0' x)\" | head -n 1500000\n"
        f"echo 'end {CANARY}'\n"
    )
    writer = writer_for(redis_client, key)
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    try:
        result = await run_installer(
            [shutil.which("bash"), str(script)],
            cwd=tmp_path,
            env={"PATH": os.environ.get("PATH", os.defpath), "PROV_JOB_ID": job_id},
            job_id=job_id,
            timeout_s=80,
            kill_grace_s=1,
            on_line=writer.add,
        )
    finally:
        await writer.close()
    elapsed = time.monotonic() - started
    rss_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kib) / 1024
    assert result.outcome == Exited(0)
    assert rss_growth_mib < 100
    assert await redis_client.xlen(key) <= 20_000
    stored = await entries(redis_client, key)
    assert sum(len(entry["line"].encode()) for entry in stored) <= 5 * 1024 * 1024
    assert stored[0]["line"] == "start ***"
    assert stored[-2]["line"] == "end ***"
    assert stored[-1]["line"].startswith("[provision] ")
    print(f"flood: {elapsed:.1f} s, peak RSS growth {rss_growth_mib:.1f} MiB")


async def test_close_handing_over_gives_the_queued_lines_in_order_and_writes_none(
    redis_client, key
):
    writer = writer_for(redis_client, key, batch_lines=3, flush_interval_s=60)
    for number in range(5):  # a batch of 3 is written, 2 stay queued
        await writer.add("stdout" if number % 2 else "stderr", f"line {number} {CANARY}")
    handed = await writer.close_handing_over()
    assert [entry["line"] for entry in await entries(redis_client, key)] == [
        "line 0 ***",
        "line 1 ***",
        "line 2 ***",
    ]
    assert handed == [
        {"stream": "stdout", "line": "line 3 ***", "attempt": "1"},
        {"stream": "stderr", "line": "line 4 ***", "attempt": "1"},
    ]
    with pytest.raises(RuntimeError, match="closed"):
        await writer.add("stdout", "late")


async def test_close_handing_over_writes_everything_itself_once_the_log_was_cut(redis_client, key):
    writer = writer_for(redis_client, key, max_lines=6, batch_lines=2, flush_interval_s=60)
    for number in range(12):
        await writer.add("stdout", f"line {number}")
    assert await writer.close_handing_over() == []
    stored = [entry["line"] for entry in await entries(redis_client, key)]
    assert stored[-1] == omitted_notice(writer.omitted_lines, writer.omitted_bytes)
    assert stored[-2] == "line 11"
    assert len(stored) <= 6
