"""Fixtures for installer tests; see harness.py for how to use them.

Every test module here except test_lib.py runs real installers on this machine, so it is
marked `installers` and `slow` and given a longer timeout than the suite's default.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.installers.harness import InstallerHarness, InstallerRun, RunUninstall, run_uninstall

# Per-test timeout for real installs: several jobs of up to 300 s each in the worst case.
INSTALLER_TEST_TIMEOUT_S = 1200
_LIBRARY_ONLY = {"test_lib.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent.resolve()
    for item in items:
        path = Path(str(item.path)).resolve()
        if path.parent != here or path.name in _LIBRARY_ONLY:
            continue
        item.add_marker(pytest.mark.installers)
        item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(INSTALLER_TEST_TIMEOUT_S))


@pytest.fixture
def installers_machine() -> None:
    """Skip (a failure under PROV_TESTS_STRICT=1) when real installers cannot run here."""
    from tests.installers.harness import machine_problem

    problem = machine_problem()
    if problem is not None:
        pytest.skip(problem)


@pytest.fixture
async def installer_run(
    installers_machine: None, redis_url: str, namespace: str, tmp_path: Path
) -> AsyncIterator[InstallerRun]:
    """`await installer_run(app_id, inputs)` -> Result, through a real in-process agent."""
    harness = InstallerHarness(redis_url=redis_url, namespace=namespace, workdir=tmp_path)
    try:
        yield harness.run
    finally:
        await harness.close()


@pytest.fixture(name="run_uninstall")
def run_uninstall_fixture(installers_machine: None) -> RunUninstall:
    """`run_uninstall(app_id, inputs, extra_env=...)`: the app's uninstall.sh, run directly."""
    return run_uninstall
