"""The webhook signature (`X-Provision-Signature: t=...,v1=...`): what verifies, what not."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from statemachine.integrations.webhook.signature import signature_header, verify_signature

SECRET = b"whsec-test-0123456789abcdef"
BODY = b'{"event_id":"01JABC","trigger":"succeed"}'
NOW = 1_764_230_400


def test_a_signed_body_verifies_with_the_same_secret_and_time():
    header = signature_header(SECRET, BODY, timestamp=NOW)
    assert verify_signature(SECRET, header, BODY, 300, NOW)


def test_the_header_is_the_hmac_of_timestamp_dot_body_as_documented():
    expected = hmac.new(SECRET, f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert signature_header(SECRET, BODY, timestamp=NOW) == f"t={NOW},v1={expected}"


def test_a_text_secret_and_its_bytes_sign_alike():
    header = signature_header(SECRET.decode(), BODY, timestamp=NOW)
    assert verify_signature(SECRET, header, BODY, 300, NOW)


def test_a_tampered_body_is_refused():
    header = signature_header(SECRET, BODY, timestamp=NOW)
    assert not verify_signature(SECRET, header, BODY.replace(b"succeed", b"fail"), 300, NOW)


def test_another_secret_is_refused():
    header = signature_header(SECRET, BODY, timestamp=NOW)
    assert not verify_signature(b"another-secret", header, BODY, 300, NOW)


@pytest.mark.parametrize("age_s", [301, -301, 86_400])
def test_a_timestamp_outside_the_tolerance_is_refused(age_s):
    header = signature_header(SECRET, BODY, timestamp=NOW - age_s)
    assert not verify_signature(SECRET, header, BODY, 300, NOW)


def test_a_timestamp_at_the_edge_of_the_tolerance_is_accepted():
    header = signature_header(SECRET, BODY, timestamp=NOW - 300)
    assert verify_signature(SECRET, header, BODY, 300, NOW)


def test_a_changed_timestamp_breaks_the_signature():
    header = signature_header(SECRET, BODY, timestamp=NOW)
    forged = header.replace(f"t={NOW}", f"t={NOW + 1}")
    assert not verify_signature(SECRET, forged, BODY, 300, NOW)


def _v1() -> str:
    return signature_header(SECRET, BODY, timestamp=NOW).split("v1=")[1]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"v1={'0' * 64}",  # no timestamp
        f"t={NOW}",  # no signature
        f"t={NOW},v1=",  # empty signature
        f"t={NOW},v1=zz{'0' * 62}",  # not hex
        f"t={NOW},v1={'0' * 63}",  # too short
        f"t=-{NOW},v1={'0' * 64}",  # negative
        f"t={NOW}.5,v1={'0' * 64}",  # fractional
        "t=" + "".join(chr(0xFF10 + int(d)) for d in str(NOW)) + ",v1=" + "0" * 64,  # fullwidth
        f"t={NOW},t={NOW},v1={'0' * 64}",  # twice
        f"t={NOW};v1={'0' * 64}",  # wrong separator
        "t=" + "9" * 5000 + ",v1=" + "0" * 64,  # oversized
        "t=" + "1" * 13 + ",v1=" + "0" * 64,  # more digits than any unix time
    ],
)
def test_a_malformed_header_is_refused(header):
    assert not verify_signature(SECRET, header, BODY, 300, NOW)


@pytest.mark.parametrize("digits", ["2" + "0" * 308, "9" * 400, "9" * 2000])
def test_a_timestamp_past_what_a_float_holds_is_refused_not_raised(digits):
    # With a float clock (time.time()), `now - t` raised OverflowError for these.
    header = f"t={digits},v1={_v1()}"
    assert not verify_signature(SECRET, header, BODY, 300, time.time())


def test_an_upper_case_signature_is_refused_since_the_sender_writes_lower_case():
    header = f"t={NOW},v1={_v1().upper()}"
    assert not verify_signature(SECRET, header, BODY, 300, NOW)


def test_one_matching_signature_among_several_verifies_as_during_a_secret_rotation():
    old = signature_header(b"old-secret", BODY, timestamp=NOW).split("v1=")[1]
    header = f"t={NOW},v1={old},v1={_v1()}"
    assert verify_signature(SECRET, header, BODY, 300, NOW)
    assert not verify_signature(b"third-secret", header, BODY, 300, NOW)


def test_an_unknown_scheme_beside_v1_is_ignored():
    header = f"t={NOW},v0=abc,v1={_v1()}"
    assert verify_signature(SECRET, header, BODY, 300, NOW)


def test_a_nan_clock_refuses_rather_than_accepts():
    header = signature_header(SECRET, BODY, timestamp=NOW)
    assert not verify_signature(SECRET, header, BODY, 300, float("nan"))
