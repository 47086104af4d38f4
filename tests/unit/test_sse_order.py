"""The live stream's merge order when events and log lines share a millisecond."""

from __future__ import annotations

from panel.web.sse import _order_key


def order(*messages: tuple[str, str, str]) -> list[str]:
    keyed = [
        (_order_key(stream_id, kind, {b"dst": dst.encode()} if kind == "event" else {}), name)
        for stream_id, kind, (name, dst) in (
            (stream_id, kind, (label, label)) for stream_id, kind, label in messages
        )
    ]
    return [name for _key, name in sorted(keyed)]


def test_output_comes_before_the_event_that_ends_its_run_in_the_same_millisecond():
    assert order(("100-0", "event", "succeeded"), ("100-0", "log", "line")) == [
        "line",
        "succeeded",
    ]
    assert order(("100-3", "event", "retry_wait"), ("100-7", "log", "line")) == [
        "line",
        "retry_wait",
    ]


def test_a_start_comes_before_the_output_of_its_run_in_the_same_millisecond():
    assert order(("100-1", "log", "line"), ("100-0", "event", "running")) == ["running", "line"]


def test_different_milliseconds_keep_their_time_order():
    assert order(("101-0", "log", "late"), ("100-5", "event", "succeeded")) == [
        "succeeded",
        "late",
    ]
