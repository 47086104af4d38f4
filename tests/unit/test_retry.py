"""The retry decision: exit codes, the backoff schedule, lost agents."""

from __future__ import annotations

import pytest

from core.reasons import Reason
from core.retry import (
    MAX_DELAY_S,
    AgentLost,
    Cancelled,
    Exited,
    Fail,
    Retry,
    RetryPolicy,
    Signalled,
    Succeed,
    TimedOut,
    VerifyFailed,
    decide,
    delay_for,
)

DEFAULT = RetryPolicy()


def test_the_default_policy_is_three_retries_from_ten_seconds_doubling():
    assert RetryPolicy(max_retries=3, base_delay_s=10.0, factor=2.0) == DEFAULT


def test_exit_2_is_retried_after_10_20_and_40_seconds_then_fails_with_install_error():
    decisions = [decide(DEFAULT, attempt, Exited(2)) for attempt in (1, 2, 3, 4)]
    assert decisions == [
        Retry(10.0, "install_error"),
        Retry(20.0, "install_error"),
        Retry(40.0, "install_error"),
        Fail("install_error"),
    ]


def test_the_delays_follow_the_policy_with_fractional_base_and_factor():
    policy = RetryPolicy(max_retries=4, base_delay_s=0.5, factor=1.5)
    delays = [delay_for(policy, n) for n in (1, 2, 3, 4)]
    assert delays == pytest.approx([0.5, 0.75, 1.125, 1.6875])
    assert decide(policy, 4, Exited(2)) == Retry(pytest.approx(1.6875), "install_error")
    assert decide(policy, 5, Exited(2)) == Fail("install_error")


def test_a_policy_without_retries_fails_the_first_exit_2():
    assert decide(RetryPolicy(max_retries=0), 1, Exited(2)) == Fail(Reason.INSTALL_ERROR)


def test_a_factor_of_one_waits_the_same_each_time():
    policy = RetryPolicy(base_delay_s=7, factor=1)
    assert [delay_for(policy, n) for n in (1, 2, 3)] == [7, 7, 7]


def test_delays_are_capped_rather_than_overflowing():
    policy = RetryPolicy(max_retries=5000, base_delay_s=10, factor=10)
    assert delay_for(policy, 5) == 100_000.0
    assert delay_for(policy, 4000) == MAX_DELAY_S


@pytest.mark.parametrize(
    ("code", "decision"),
    [
        (0, Succeed()),
        (1, Fail("validation_error")),
        (3, Fail("config_error")),
        (4, Fail("unknown_exit")),
        (127, Fail("unknown_exit")),
        (137, Fail("unknown_exit")),
        (255, Fail("unknown_exit")),
        (-9, Fail("killed")),
        (-15, Fail("killed")),
    ],
)
def test_each_exit_code_has_its_decision(code, decision):
    assert decide(DEFAULT, 1, Exited(code)) == decision


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (Signalled(9), Reason.KILLED),
        (TimedOut(), Reason.TIMEOUT),
        (Cancelled(), Reason.CANCELLED),
        (VerifyFailed(), Reason.VERIFY_FAILED),
    ],
)
def test_other_ends_fail_at_once_with_their_reason(outcome, reason):
    assert decide(DEFAULT, 1, outcome) == Fail(reason)


def test_non_retryable_ends_do_not_retry_even_with_retries_left():
    for outcome in (Exited(1), Exited(3), Signalled(15), TimedOut(), VerifyFailed()):
        assert isinstance(decide(RetryPolicy(max_retries=100), 1, outcome), Fail)


def test_a_lost_agent_retries_an_idempotent_job_on_the_same_schedule():
    assert decide(DEFAULT, 1, AgentLost()) == Retry(10.0, "agent_lost")
    assert decide(DEFAULT, 3, AgentLost(), idempotent=True) == Retry(40.0, "agent_lost")


def test_a_lost_agent_fails_an_idempotent_job_without_retries_left():
    assert decide(DEFAULT, 4, AgentLost()) == Fail("agent_lost")


def test_a_lost_agent_fails_a_non_idempotent_job_at_once():
    assert decide(DEFAULT, 1, AgentLost(), idempotent=False) == Fail("agent_lost")


def test_idempotence_does_not_matter_for_exit_2():
    assert decide(DEFAULT, 1, Exited(2), idempotent=False) == Retry(10.0, "install_error")


def test_decisions_carry_reason_codes_of_the_design():
    reasons = {
        decision.reason
        for outcome in (
            Exited(1),
            Exited(2),
            Exited(3),
            Exited(9),
            Signalled(9),
            TimedOut(),
            Cancelled(),
            VerifyFailed(),
            AgentLost(),
        )
        for decision in [decide(DEFAULT, 9, outcome)]
        if isinstance(decision, Fail)
    }
    assert reasons <= set(Reason)


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempts_start_at_one(attempt):
    with pytest.raises(ValueError, match="start at 1"):
        decide(DEFAULT, attempt, Exited(2))


def test_retry_numbers_start_at_one():
    with pytest.raises(ValueError, match="start at 1"):
        delay_for(DEFAULT, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"max_retries": True},
        {"base_delay_s": -0.1},
        {"base_delay_s": float("nan")},
        {"base_delay_s": float("inf")},
        {"factor": 0},
        {"factor": float("nan")},
    ],
)
def test_a_nonsensical_policy_is_refused(kwargs):
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**kwargs)


def test_reason_codes_are_plain_strings():
    assert Reason.INSTALL_ERROR == "install_error"
    assert f"{Reason.AGENT_LOST}" == "agent_lost"
    assert len(set(Reason)) == 20
