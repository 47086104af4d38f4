"""A package download that fails is a temporary error: exit 2, retried on the backoff schedule.

The package manager is pointed at a mirror on this machine that nothing serves (loopback,
port 9), as if the real mirror were down; the sources are restored afterwards whatever
happens. memcached is the app: small, and not installed unless a test put it there.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.installers.harness import run_uninstall

SOURCES_DIR = Path("/etc/apt/sources.list.d")
SOURCES_LIST = Path("/etc/apt/sources.list")
UNREACHABLE = "deb http://127.0.0.1:9/debian bookworm main\n"


@pytest.fixture
def unreachable_mirror(tmp_path: Path) -> Iterator[None]:
    saved = tmp_path / "apt-sources"
    saved.mkdir()
    moved: list[tuple[Path, Path]] = []
    for source in [SOURCES_LIST, *sorted(SOURCES_DIR.glob("*"))]:
        if source.is_file():
            target = saved / source.name
            shutil.move(source, target)
            moved.append((source, target))
    # memcached must really be downloaded: not installed, and not in apt's cache.
    run_uninstall("memcached", extra_env={"REMOVE_DATA": "true"})
    for cached in Path("/var/cache/apt/archives").glob("memcached_*.deb"):
        cached.unlink()
    SOURCES_LIST.write_text(UNREACHABLE)
    try:
        yield
    finally:
        SOURCES_LIST.unlink(missing_ok=True)
        for original, target in moved:
            shutil.move(target, original)
        # Lists for the unreachable mirror are gone with it; the real ones were never touched.
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)


async def test_a_package_download_failure_is_retried_on_schedule_then_fails_as_install_error(
    installer_run, unreachable_mirror
):
    result = await installer_run("memcached", {"port": 11299}, timeout_s=240)
    assert (result.state, result.reason, result.exit_code) == ("failed", "install_error", "2")
    retries = [event for event in result.events if event.trigger == "retry"]
    # The manifest's policy: 3 retries after 10, 20 and 40 s.
    assert [event.detail["delay_s"] for event in retries] == [10.0, 20.0, 40.0]
    assert all(event.detail["exit_code"] == 2 for event in retries)
    assert result.triggers.count("start") == 4
    assert result.has_line("apt-get install")
