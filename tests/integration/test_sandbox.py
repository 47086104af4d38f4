"""The sandboxed runner against real processes: outcomes, output, environment, and cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from uuid import uuid4

import pytest

from agent.sandbox import TRUNCATION_SUFFIX, RunResult, run_installer
from core.retry import Cancelled, Exited, Signalled, TimedOut

BASH = shutil.which("bash")
SETSID = shutil.which("setsid")
pytestmark = pytest.mark.skipif(
    BASH is None or SETSID is None or not Path("/proc/self/environ").exists(),
    reason="needs bash, setsid and /proc",
)


def job_pids(job_id: str) -> list[int]:
    """Live processes whose environment carries PROV_JOB_ID=job_id (read independently)."""
    entry = f"PROV_JOB_ID={job_id}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            entries = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry in entries:
            found.append(int(name))
    return found


async def wait_until(condition, *, timeout_s: float = 5.0, interval_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval_s)


class Lines:
    """An on_line callback that records what it gets."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []
        self.seen = asyncio.Event()

    async def __call__(self, stream: str, line: str) -> None:
        self.got.append((stream, line))
        self.seen.set()

    def of(self, stream: str) -> list[str]:
        return [line for name, line in self.got if name == stream]


@pytest.fixture
def job_id():
    job = f"job-{uuid4().hex}"
    yield job
    # Whatever a failing test left behind must not outlive it.
    for pid in job_pids(job):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def env(job_id, tmp_path):
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "HOME": str(tmp_path),
        "PROV_JOB_ID": job_id,
        "PROV_APP_ID": "demo",
        "PROV_ATTEMPT": "1",
    }


@pytest.fixture
def run(tmp_path, env, job_id):
    """Run a bash script body under run_installer with short test timings."""

    async def runner(
        body: str,
        *,
        on_line=None,
        timeout_s: float = 20.0,
        kill_grace_s: float = 1.0,
        cancel: asyncio.Event | None = None,
        run_env: dict[str, str] | None = None,
        **options,
    ) -> RunResult:
        script = tmp_path / f"install-{uuid4().hex[:8]}.sh"
        script.write_text(body)
        return await run_installer(
            [BASH, str(script)],
            cwd=tmp_path,
            env=env if run_env is None else run_env,
            job_id=job_id,
            timeout_s=timeout_s,
            kill_grace_s=kill_grace_s,
            on_line=on_line or Lines(),
            cancel=cancel,
            **options,
        )

    return runner


# Starts a process that leaves the group with setsid, and waits until it has (a process
# that has not exec'd setsid yet is still in the group, and the group kill would take it).
def detached(name: str) -> str:
    return (
        f"setsid sh -c ': > {name}; exec sleep 1000' &\n"
        f"while [ ! -e {name} ]; do sleep 0.01; done\n"
    )


# A script that ignores SIGTERM (so do its children: an ignored signal stays ignored across
# exec) and leaves grandchildren of every kind: one in its group, one that left the group
# with setsid, one double-forked away from its parent (orphaned, still in the group) and one
# double-forked and setsid.
STUBBORN = (
    "trap '' TERM\n"
    "sleep 1000 &\n"
    + detached("detached-1")
    + "( sleep 1000 & )\n"
    + "( "
    + detached("detached-2").replace("\n", " ")
    + " ) \n"
    + "echo ready\n"
    + "while true; do sleep 1000; done\n"
)


@pytest.mark.parametrize("code", [0, 1, 2, 3, 7])
async def test_the_exit_code_of_the_script_is_the_outcome(run, code):
    result = await run(f"exit {code}\n")
    assert result.outcome == Exited(code)
    assert result.swept_pids == ()
    assert result.duration_s < 5


async def test_a_script_that_kills_itself_is_reported_as_signalled(run):
    result = await run("echo before\nkill -9 $$\necho after\n")
    assert result.outcome == Signalled(signal.SIGKILL)


async def test_a_timeout_kills_the_group_and_sweeps_escaped_children(run, job_id):
    lines = Lines()
    started = time.monotonic()
    result = await run(STUBBORN, on_line=lines, timeout_s=1.5, kill_grace_s=1.0)
    elapsed = time.monotonic() - started
    assert result.outcome == TimedOut()
    assert lines.of("stdout") == ["ready"]
    # Timeout, then the whole grace (the leader ignores SIGTERM), then SIGKILL and the sweep.
    assert 2.4 <= elapsed < 1.5 + 1.0 + 4
    # The two setsid'd sleeps left the group; only the sweep can have killed them.
    assert len(result.swept_pids) == 2
    assert job_pids(job_id) == []


async def test_setting_the_cancel_event_kills_the_run_within_a_second(run, job_id):
    lines = Lines()
    cancel = asyncio.Event()
    body = "sleep 1000 &\n" + detached("daemon") + "echo ready\nsleep 1000\n"
    task = asyncio.create_task(run(body, on_line=lines, cancel=cancel, kill_grace_s=5.0))
    await asyncio.wait_for(lines.seen.wait(), 5)
    cancelled_at = time.monotonic()
    cancel.set()
    result = await task
    assert result.outcome == Cancelled()
    # bash dies of the SIGTERM at once, so the grace period is not waited out.
    assert time.monotonic() - cancelled_at < 1.5
    assert len(result.swept_pids) == 1
    assert job_pids(job_id) == []


async def test_a_service_started_by_a_successful_script_keeps_running(run, job_id):
    lines = Lines()
    # The daemon keeps the script's stdout and stderr open: the run must not wait for it.
    body = detached("daemon") + "echo installed\nexit 0\n"
    started = time.monotonic()
    result = await run(body, on_line=lines, drain_after_exit_s=0.5)
    assert result.outcome == Exited(0)
    assert time.monotonic() - started < 3
    assert result.swept_pids == ()
    assert lines.of("stdout") == ["installed"]
    daemons = job_pids(job_id)
    assert len(daemons) == 1  # alive; the job_id fixture kills it


async def test_output_a_daemon_writes_right_after_the_exit_is_still_read(run, job_id):
    lines = Lines()
    body = "( sleep 0.2; echo from-daemon; exec sleep 1000 ) &\necho installed\n"
    result = await run(body, on_line=lines, drain_after_exit_s=1.5)
    assert result.outcome == Exited(0)
    assert lines.of("stdout") == ["installed", "from-daemon"]
    assert len(job_pids(job_id)) == 1


async def test_stdin_is_dev_null(run):
    lines = Lines()
    result = await run('cat\nreadlink /proc/self/fd/0\necho "done"\n', on_line=lines)
    assert result.outcome == Exited(0)
    assert lines.of("stdout") == ["/dev/null", "done"]


async def test_the_environment_is_exactly_the_one_given(run, env):
    lines = Lines()
    run_env = {**env, "SERVER_NAME": "example.com", "ODD": "a b=c;$(x)"}
    # /proc/$$/environ is what the kernel handed to bash: `env` would show what bash adds.
    result = await run("tr '\\0' '\\n' < /proc/$$/environ\n", on_line=lines, run_env=run_env)
    assert result.outcome == Exited(0)
    received = dict(line.split("=", 1) for line in lines.of("stdout"))
    assert received == run_env


async def test_the_script_runs_in_its_own_session_in_the_given_folder(run, tmp_path):
    lines = Lines()
    result = await run('echo "$(pwd)"\nps -o sid= -o pgid= -p $$\necho $$\n', on_line=lines)
    assert result.outcome == Exited(0)
    cwd, ids, pid = lines.of("stdout")
    assert cwd == str(tmp_path)
    assert ids.split() == [pid, pid]
    assert int(pid) != os.getpgrp()


async def test_lines_keep_their_order_and_their_stream(run):
    lines = Lines()
    body = "for i in $(seq 1 2000); do echo out-$i; echo err-$i >&2; done\nprintf 'no-newline'\n"
    result = await run(body, on_line=lines)
    assert result.outcome == Exited(0)
    assert lines.of("stdout") == [f"out-{i}" for i in range(1, 2001)] + ["no-newline"]
    assert lines.of("stderr") == [f"err-{i}" for i in range(1, 2001)]


async def test_carriage_returns_are_stripped_and_bad_utf8_is_replaced(run):
    lines = Lines()
    result = await run("printf 'dos\\r\\n\\xff\\xfeok\\n\\n'\n", on_line=lines)
    assert result.outcome == Exited(0)
    assert lines.of("stdout") == ["dos", "\ufffd\ufffdok", ""]


async def test_a_very_long_line_is_cut_and_marked_and_the_next_line_follows(run):
    lines = Lines()
    body = "head -c 10000 /dev/zero | tr '\\0' a\necho\necho next\n"
    result = await run(body, on_line=lines, max_line_bytes=8192)
    assert result.outcome == Exited(0)
    assert lines.of("stdout") == ["a" * 8192 + TRUNCATION_SUFFIX, "next"]


async def test_a_cut_never_splits_a_character(run):
    lines = Lines()
    # "é" is two bytes: a cut at an odd byte count would fall inside one.
    body = "for i in $(seq 1 100); do printf 'é'; done\necho\n"
    await run(body, on_line=lines, max_line_bytes=101)
    assert lines.of("stdout") == ["é" * 50 + TRUNCATION_SUFFIX]


async def test_cancelling_the_runner_kills_the_group_and_re_raises(run, job_id):
    lines = Lines()
    task = asyncio.create_task(run(STUBBORN, on_line=lines, kill_grace_s=0.5))
    await asyncio.wait_for(lines.seen.wait(), 5)
    await wait_until(lambda: len(job_pids(job_id)) >= 6)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert job_pids(job_id) == []


async def test_cancelling_the_runner_twice_still_finishes_the_cleanup(run, job_id):
    lines = Lines()
    task = asyncio.create_task(run(STUBBORN, on_line=lines, kill_grace_s=0.5))
    await asyncio.wait_for(lines.seen.wait(), 5)
    task.cancel()
    await asyncio.sleep(0.1)  # now inside the grace period
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert job_pids(job_id) == []


async def test_an_error_in_on_line_kills_the_run_and_is_raised(run, job_id):
    async def failing(stream: str, line: str) -> None:
        raise RuntimeError("the log is gone")

    with pytest.raises(RuntimeError, match="the log is gone"):
        await run(STUBBORN, on_line=failing, kill_grace_s=0.5)
    assert job_pids(job_id) == []


async def test_a_slow_consumer_slows_the_script_down_instead_of_buffering(run):
    seen = 0

    async def slow(stream: str, line: str) -> None:
        nonlocal seen
        seen += 1
        if seen % 100 == 0:
            await asyncio.sleep(0.01)

    # 200k lines of 1 KiB through a consumer that pauses: everything arrives, in order.
    body = "yes \"$(head -c 1000 /dev/zero | tr '\\0' x)\" | head -n 20000\n"
    result = await run(body, on_line=slow)
    assert result.outcome == Exited(0)
    assert seen == 20000


async def test_an_env_without_the_job_id_is_refused(run, env):
    with pytest.raises(ValueError, match="PROV_JOB_ID"):
        await run("exit 0\n", run_env={k: v for k, v in env.items() if k != "PROV_JOB_ID"})
