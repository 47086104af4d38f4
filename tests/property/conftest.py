"""Hypothesis profiles for the property suite, chosen with HYPOTHESIS_PROFILE.

`ci` (the default) keeps the whole folder to a couple of minutes on a shared two-core
machine; `full` runs many more examples for a deliberate search:

    HYPOTHESIS_PROFILE=full .venv/bin/pytest tests/property

The wall-clock `deadline` is off in both: a shared machine makes it flaky. Speed is checked
instead on the CPU time of each call under test (see `timing.py`).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings

from tests.property.timing import SLOWEST

# No `explain` phase: it traces every line of a failing example, which would count in the
# CPU time of the call and blur which input was slow.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
settings.register_profile(
    "ci",
    phases=PHASES,
    max_examples=150,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "full",
    phases=PHASES,
    max_examples=5000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the slowest call (CPU time) of each fuzzed function, to watch the margin."""
    if not SLOWEST:
        return
    terminalreporter.section("slowest fuzzed calls (CPU ms)")
    for name, (cpu_s, sample) in sorted(SLOWEST.items()):
        terminalreporter.write_line(f"{name}: {cpu_s * 1000:.1f} ms  input {sample}")
