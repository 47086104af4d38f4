"""The forwarder's pure decisions and option parsing: answers, backoff, filters, secrets."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from core.keys import RedisKeys
from statemachine.integrations.webhook.options import (
    WebhookConfigError,
    check_group,
    check_url,
    parse_filters,
    read_secret_file,
    redact_url,
)
from statemachine.integrations.webhook.policy import (
    Bury,
    Delivered,
    Outcome,
    Retry,
    RetryPolicy,
    backoff_s,
    decide,
    parse_retry_after,
)

POLICY = RetryPolicy(max_attempts=8, base_s=1.0, max_s=60.0)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_a_2xx_answer_is_delivered(status):
    assert decide(POLICY, 1, Outcome(status), jitter=0.5) == Delivered()


@pytest.mark.parametrize("status", [None, 408, 429, 500, 502, 503, 504])
def test_no_answer_408_429_and_5xx_are_retried(status):
    assert isinstance(decide(POLICY, 1, Outcome(status, "x"), jitter=0.5), Retry)


@pytest.mark.parametrize("status", [301, 302, 400, 401, 403, 404, 410, 413, 422])
def test_other_answers_are_permanent_at_the_first_attempt(status):
    decision = decide(POLICY, 1, Outcome(status, "nope"), jitter=0.5)
    assert decision == Bury(f"http {status}: nope")


def test_the_last_attempt_buries_a_retryable_failure_saying_how_many_were_made():
    decision = decide(POLICY, 8, Outcome(None, "ClientConnectorError"), jitter=0.5)
    assert decision == Bury("no answer: ClientConnectorError (after 8 attempts)")


def test_backoff_doubles_from_the_base_up_to_the_cap_with_jitter_within_half_a_step():
    lows = [backoff_s(POLICY, n, jitter=0.0) for n in range(1, 10)]
    highs = [backoff_s(POLICY, n, jitter=0.999999) for n in range(1, 10)]
    assert lows == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert [round(h) for h in highs] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_backoff_of_a_huge_attempt_count_stays_at_the_cap():
    assert backoff_s(POLICY, 10_000, jitter=1.0) == 60.0


def test_retry_after_longer_than_the_backoff_is_honoured_and_capped():
    assert decide(POLICY, 1, Outcome(429, retry_after_s=7), jitter=0.0) == Retry(7)
    assert decide(POLICY, 1, Outcome(503, retry_after_s=3600), jitter=0.0) == Retry(60.0)
    assert decide(POLICY, 1, Outcome(429, retry_after_s=0), jitter=0.0) == Retry(0.5)


def test_retry_after_is_read_as_seconds_or_an_http_date():
    now = 1_764_230_400.0
    date = format_datetime(datetime.fromtimestamp(now + 30, tz=UTC), usegmt=True)
    assert parse_retry_after("12", now=now) == 12.0
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("-5", now=now) is None
    assert parse_retry_after(None, now=now) is None


@pytest.mark.parametrize(
    "value",
    [
        "1" + "0" * 308,  # past a float: OverflowError before
        "9" * 5000,  # past int()'s digit limit: ValueError before
        "12345678901",  # over 300 years: no wait a receiver means
        "Mon, 01 Jan 99999 00:00:00 GMT",  # a date that does not exist
    ],
)
def test_an_unreadable_retry_after_is_ignored_rather_than_raising(value):
    assert parse_retry_after(value, now=0.0) is None


def test_retry_after_with_leading_zeros_is_read_as_its_number():
    assert parse_retry_after("0" * 400 + "7", now=0.0) == 7.0


def test_a_policy_without_attempts_or_with_an_inverted_backoff_is_refused():
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(base_s=10, max_s=1)


def test_filters_repeat_a_key_to_add_values_and_combine_different_keys():
    chosen = parse_filters(["app=web", "trigger=succeed", "trigger=fail,cancel", "state=failed"])
    assert chosen.app_ids == {"web"}
    assert chosen.triggers == {"succeed", "fail", "cancel"}
    assert chosen.states == {"failed"}


@pytest.mark.parametrize("spec", ["app", "app=", "colour=red", "=web", "trigger=,"])
def test_a_bad_filter_is_refused_with_the_syntax(spec):
    with pytest.raises(WebhookConfigError, match="app=ID"):
        parse_filters([spec])


@pytest.mark.parametrize("group", ["", "a:b", "A", "-x", "a b", "x" * 64, "ü"])
def test_a_group_name_unsafe_in_a_key_is_refused(group):
    with pytest.raises(WebhookConfigError):
        check_group(group)
    with pytest.raises(ValueError, match="invalid integration group"):
        RedisKeys().integration_dead(group)


def test_a_group_names_its_own_dead_letter_and_redrive_streams():
    keys = RedisKeys("prov")
    assert check_group("billing-1") == "billing-1"
    assert keys.integration_dead("billing-1") == "prov:integrations:billing-1:dead"
    assert keys.integration_redrive("billing-1") == "prov:integrations:billing-1:redrive"


@pytest.mark.parametrize("url", ["ftp://x/", "http://", "/hook", "example.com/hook"])
def test_only_absolute_http_urls_are_taken(url):
    with pytest.raises(WebhookConfigError):
        check_url(url)


def test_credentials_in_the_url_are_hidden_in_logs():
    assert (
        redact_url("https://u:pw@hooks.example:8443/in?a=1")
        == "https://***@hooks.example:8443/in?a=1"
    )
    assert redact_url("https://hooks.example/in") == "https://hooks.example/in"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@10.0.0.5:6379/0", "redis://***@10.0.0.5:6379/0"),
        ("rediss://app:s3cret@[::1]:6380", "rediss://***@[::1]:6380"),
        ("unix:///run/redis.sock?db=2&password=s3cret", "unix:///run/redis.sock?db=2&password=***"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_a_redis_password_is_hidden_in_either_place_a_url_can_hold_it(url, shown):
    assert redact_url(url) == shown


def test_the_secret_file_is_read_stripped(tmp_path):
    path = tmp_path / "secret"
    path.write_text("  s3cret-value\n")
    path.chmod(0o600)
    assert read_secret_file(path) == b"s3cret-value"


@pytest.mark.parametrize("mode", [0o604, 0o644, 0o606, 0o602])
def test_a_secret_file_others_may_read_or_write_is_refused(tmp_path, mode):
    path = tmp_path / "secret"
    path.write_text("s3cret-value\n")
    path.chmod(mode)
    with pytest.raises(WebhookConfigError, match="chmod 600") as error:
        read_secret_file(path)
    assert "s3cret" not in str(error.value)


def test_an_empty_or_missing_secret_file_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text(" \n\t\n")
    empty.chmod(0o600)
    with pytest.raises(WebhookConfigError, match="empty"):
        read_secret_file(empty)
    with pytest.raises(WebhookConfigError, match="cannot read"):
        read_secret_file(tmp_path / "absent")
