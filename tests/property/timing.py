"""Time each fuzzed call on CPU time, fail past the limit, remember the slowest per function.

The issue's bound is "no input slower than 100 ms". CPU time of the calling thread
(`time.thread_time`) rather than wall time, so another process hogging the shared machine
cannot fail the suite, while a slow parser still does. The garbage collector is held off
during the call: a full collection costs in proportion to everything the test process holds
(hypothesis keeps a lot), not to the input, and once took 500 ms inside a 0.1 ms parse.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import TypeVar

LIMIT_S = 0.100
T = TypeVar("T")

# function name -> (slowest CPU seconds seen, a short repr of that input)
SLOWEST: dict[str, tuple[float, str]] = {}


def timed(name: str, sample: object, call: Callable[[], T]) -> T:
    """Run `call`, assert it took under LIMIT_S of CPU time (raising or not), return its value."""
    collecting = gc.isenabled()
    gc.disable()
    started = time.thread_time()
    try:
        return call()
    finally:
        spent = time.thread_time() - started
        if collecting:
            gc.enable()
        if spent > SLOWEST.get(name, (0.0, ""))[0]:
            SLOWEST[name] = (spent, repr(sample)[:80])
        assert spent < LIMIT_S, f"{name} took {spent * 1000:.0f} ms of CPU on {repr(sample)[:300]}"


def refusal(expected: type[Exception], call: Callable[[], object]) -> Exception | None:
    """The `expected` error `call` raised, or None; any other exception propagates."""
    try:
        call()
    except expected as error:
        return error
    return None
