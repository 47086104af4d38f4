"""Shared fixtures and the strict-skip switch.

With `PROV_TESTS_STRICT=1` (set by `.ci/run`) a skipped test is reported as a failure: a test
that needs something absent must fail in CI, never pass quietly.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

STRICT = os.environ.get("PROV_TESTS_STRICT", "") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under PROV_TESTS_STRICT=1: {report.longrepr}"
