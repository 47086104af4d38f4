"""Signed envelopes: canonical bytes, HMAC over raw bytes, strict parsing, expiry."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import (
    BadSignature,
    EnvelopeError,
    EnvelopeExpired,
    MalformedEnvelope,
    UnknownKey,
)
from core.keyring import KeyRing
from core.signing import (
    Envelope,
    SignedEnvelope,
    build_envelope,
    canonical_bytes,
    peek_job_id,
    read_stream_fields,
    sign,
    sign_envelope,
    verify_envelope,
)

JOB_ID = "01J9Z3Q6Y8V5K2M4N7P0R1S2T3"
NOW = 1_764_230_400
TTL = 3600
RING = KeyRing({"k1": b"\x01" * 32})
ROTATED = KeyRing({"k1": b"\x01" * 32, "k2": b"\x02" * 32})


def make_envelope(**changes: object) -> Envelope:
    fields: dict[str, object] = {
        "job_id": JOB_ID,
        "app_id": "nginx",
        "app_fingerprint": "sha256:" + "ab" * 32,
        "target": "local",
        "inputs": {"server_name": "example.com", "modules": ["gzip", "ssl"], "note": "naïve ☃"},
        "sealed": {"admin_password": "c2VhbGVk"},
        "requested_by": "alice",
        "now": NOW,
        "ttl_s": TTL,
    }
    fields.update(changes)
    return build_envelope(**fields)  # type: ignore[arg-type]


def valid_dict(**changes: object) -> dict[str, object]:
    data = make_envelope().to_dict()
    data["kid"] = "k1"
    data.update(changes)
    return data


def signed_raw(payload: bytes, ring: KeyRing = RING) -> tuple[bytes, str, str]:
    kid, sig = sign(ring, payload)
    return payload, sig, kid


# --- canonical bytes and signing -------------------------------------------------------


def test_canonical_bytes_sort_keys_drop_spaces_and_keep_utf8():
    assert canonical_bytes({"b": 1, "a": ["é", "x"]}) == '{"a":["é","x"],"b":1}'.encode()


def test_canonical_bytes_refuse_nan():
    with pytest.raises(ValueError, match="JSON compliant"):
        canonical_bytes({"x": float("nan")})


def test_sign_uses_the_newest_key():
    kid, sig = sign(ROTATED, b"payload")
    assert kid == "k2"
    assert len(sig) == 64
    assert sig == sig.lower()


def test_sign_envelope_sets_the_signing_kid_and_signs_canonical_bytes():
    signed = sign_envelope(make_envelope(), ROTATED)
    assert signed.kid == "k2"
    assert json.loads(signed.envelope_bytes)["kid"] == "k2"
    assert signed.envelope_bytes == canonical_bytes(json.loads(signed.envelope_bytes))


def test_sign_envelope_refuses_an_envelope_that_names_another_kid():
    with pytest.raises(ValueError, match="k1"):
        sign_envelope(make_envelope(kid="k1"), ROTATED)


def test_sign_envelope_refuses_what_the_agent_would_refuse():
    with pytest.raises(MalformedEnvelope, match="ULID"):
        sign_envelope(make_envelope(job_id="job-1"), RING)


def test_stream_fields_are_exactly_envelope_sig_and_kid():
    signed = sign_envelope(make_envelope(), RING)
    assert signed.stream_fields() == {
        "envelope": signed.envelope_bytes,
        "sig": signed.sig,
        "kid": "k1",
    }


def test_stream_fields_read_back_from_redis_bytes():
    signed = sign_envelope(make_envelope(), RING)
    raw = {
        key.encode(): (v if isinstance(v, bytes) else v.encode())
        for key, v in signed.stream_fields().items()
    }
    assert read_stream_fields(raw) == signed


def test_a_stream_entry_without_sig_is_malformed():
    with pytest.raises(MalformedEnvelope, match="sig"):
        read_stream_fields({b"envelope": b"{}", b"kid": b"k1"})


# --- the round trip ----------------------------------------------------------------------


def test_a_signed_envelope_verifies_back_to_the_same_envelope():
    envelope = make_envelope()
    signed = sign_envelope(envelope, RING)
    verified = verify_envelope(signed.envelope_bytes, signed.sig, signed.kid, RING, now=NOW)
    assert verified == signed.envelope
    assert verified.inputs == {
        "server_name": "example.com",
        "modules": ["gzip", "ssl"],
        "note": "naïve ☃",
    }
    assert verified.kid == "k1"
    assert verified.expires_at == NOW + TTL


def test_an_envelope_signed_with_a_rotated_out_key_still_verifies():
    signed = sign_envelope(make_envelope(), RING)  # signed when k1 was newest
    verified = verify_envelope(signed.envelope_bytes, signed.sig, signed.kid, ROTATED, now=NOW)
    assert verified.kid == "k1"


def test_verification_uses_the_raw_bytes_not_a_re_serialisation():
    # Valid JSON that is not canonical (spaces, other key order) verifies as signed: the
    # agent checks the bytes it received and never rebuilds them.
    data = valid_dict()
    payload = json.dumps(data, indent=2, ensure_ascii=True).encode()
    assert payload != canonical_bytes(data)
    verified = verify_envelope(*signed_raw(payload), RING, now=NOW)
    assert verified.job_id == JOB_ID


# --- key id and signature ------------------------------------------------------------


def test_an_unknown_kid_is_refused_before_anything_else():
    signed = sign_envelope(make_envelope(), RING)
    with pytest.raises(UnknownKey) as caught:
        verify_envelope(b"garbage", "not a sig", "k9", RING, now=NOW + 10 * TTL)
    assert caught.value.reason == "unknown_key"
    with pytest.raises(UnknownKey):
        verify_envelope(signed.envelope_bytes, signed.sig, "K1", RING, now=NOW)


@pytest.mark.parametrize(
    "mangle",
    [
        str.upper,
        lambda sig: sig[:-1],
        lambda sig: sig + "0",
        lambda sig: "",
        lambda sig: " " + sig[1:],
        lambda sig: sig[:-1] + "g",
        lambda sig: "0" * 64,
    ],
    ids=["upper-case", "short", "long", "empty", "space", "not hex", "zeros"],
)
def test_a_signature_not_exactly_as_made_is_a_bad_signature(mangle):
    signed = sign_envelope(make_envelope(), RING)
    with pytest.raises(BadSignature) as caught:
        verify_envelope(signed.envelope_bytes, mangle(signed.sig), "k1", RING, now=NOW)
    assert caught.value.reason == "bad_signature"


def test_a_signature_by_another_key_of_the_ring_is_a_bad_signature():
    signed = sign_envelope(make_envelope(), RING)
    with pytest.raises(BadSignature):
        verify_envelope(signed.envelope_bytes, signed.sig, "k2", ROTATED, now=NOW)


def test_the_signature_is_checked_before_parsing_and_expiry():
    with pytest.raises(BadSignature):
        verify_envelope(b"not json", "0" * 64, "k1", RING, now=NOW)
    expired = sign_envelope(make_envelope(), RING)
    with pytest.raises(BadSignature):
        verify_envelope(expired.envelope_bytes, "0" * 64, "k1", RING, now=NOW + 10 * TTL)


SIGNED = sign_envelope(make_envelope(), RING)


@given(index=st.integers(0, len(SIGNED.envelope_bytes) - 1), new=st.integers(0, 255))
def test_changing_any_single_byte_of_the_envelope_is_refused(index, new):
    data = bytearray(SIGNED.envelope_bytes)
    if data[index] == new:
        new ^= 0x01
    data[index] = new
    with pytest.raises(BadSignature):
        verify_envelope(bytes(data), SIGNED.sig, SIGNED.kid, RING, now=NOW)


@given(index=st.integers(0, 63), new=st.characters())
def test_changing_any_single_character_of_the_signature_is_refused(index, new):
    sig = list(SIGNED.sig)
    if sig[index] == new:
        new = "0" if new != "0" else "1"
    sig[index] = new
    with pytest.raises(BadSignature):
        verify_envelope(SIGNED.envelope_bytes, "".join(sig), SIGNED.kid, RING, now=NOW)


@given(st.binary(max_size=64))
def test_appending_or_prepending_bytes_is_refused(extra):
    if not extra:
        return
    for payload in (SIGNED.envelope_bytes + extra, extra + SIGNED.envelope_bytes):
        with pytest.raises(BadSignature):
            verify_envelope(payload, SIGNED.sig, SIGNED.kid, RING, now=NOW)


# --- strict parsing after a valid signature --------------------------------------------


def test_an_envelope_whose_kid_differs_from_the_stream_kid_is_refused():
    payload = canonical_bytes(valid_dict(kid="k1"))
    _, sig = sign(ROTATED, payload)  # correctly signed with k2
    with pytest.raises(MalformedEnvelope, match="kid"):
        verify_envelope(payload, sig, "k2", ROTATED, now=NOW)


def _with(field: str, raw_json_value: str) -> bytes:
    """Canonical bytes of a valid envelope with one field's JSON replaced verbatim."""
    marker = "__MARK__"
    text = canonical_bytes(valid_dict(**{field: marker})).decode()
    return text.replace(json.dumps(marker), raw_json_value).encode()


MALFORMED_BUT_SIGNED = {
    "duplicate key": canonical_bytes(valid_dict())[:-1] + b',"job_id":"' + JOB_ID.encode() + b'"}',
    "duplicate nested key": _with("inputs", '{"a":"1","a":"2"}'),
    "NaN": _with("issued_at", "NaN"),
    "Infinity": _with("expires_at", "Infinity"),
    "-Infinity": _with("expires_at", "-Infinity"),
    "huge float": _with("expires_at", "1e400"),
    "float timestamp": _with("issued_at", "1764230400.0"),
    "bool as int": _with("issued_at", "true"),
    "bool as version": _with("v", "true"),
    "version 2": _with("v", "2"),
    "string version": _with("v", '"1"'),
    "null string": _with("app_id", "null"),
    "int string": _with("requested_by", "7"),
    "extra field": canonical_bytes(valid_dict(extra="x")),
    "missing field": canonical_bytes({k: v for k, v in valid_dict().items() if k != "target"}),
    "inputs not an object": _with("inputs", '["a"]'),
    "input value a number": _with("inputs", '{"port":443}'),
    "input list with a number": _with("inputs", '{"mods":["a",1]}'),
    "input nested list": _with("inputs", '{"mods":[["a"]]}'),
    "sealed value not a string": _with("sealed", '{"pw":["x"]}'),
    "input both clear and sealed": _with("sealed", '{"server_name":"eA=="}'),
    "lone surrogate": _with("app_id", '"\\ud800"'),
    "job id not a ULID": _with("job_id", '"job:1"'),
    "top-level array": b"[1,2]",
    "top-level string": b'"x"',
    "empty": b"",
    "not UTF-8": canonical_bytes(valid_dict()).replace(b"alice", b"al\xffce"),
    "UTF-8 BOM": b"\xef\xbb\xbf" + canonical_bytes(valid_dict()),
    "UTF-16": json.dumps(valid_dict()).encode("utf-16"),
    "trailing garbage": canonical_bytes(valid_dict()) + b"x",
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("payload", MALFORMED_BUT_SIGNED.values(), ids=MALFORMED_BUT_SIGNED.keys())
def test_a_validly_signed_but_malformed_envelope_is_refused_as_malformed(payload):
    with pytest.raises(MalformedEnvelope) as caught:
        verify_envelope(*signed_raw(payload), RING, now=NOW)
    assert caught.value.reason == "malformed"


def test_an_empty_inputs_and_sealed_envelope_is_fine():
    payload = canonical_bytes(valid_dict(inputs={}, sealed={}))
    envelope = verify_envelope(*signed_raw(payload), RING, now=NOW)
    assert envelope.inputs == {}
    assert envelope.sealed == {}


# --- expiry ------------------------------------------------------------------------------


def test_an_envelope_is_valid_up_to_and_including_expires_at():
    verify_envelope(*signed_raw(canonical_bytes(valid_dict())), RING, now=NOW + TTL)


def test_an_envelope_past_expires_at_is_expired():
    with pytest.raises(EnvelopeExpired) as caught:
        verify_envelope(*signed_raw(canonical_bytes(valid_dict())), RING, now=NOW + TTL + 1)
    assert caught.value.reason == "expired"
    assert caught.value.now == NOW + TTL + 1
    assert caught.value.expires_at == NOW + TTL


def test_an_envelope_issued_up_to_sixty_seconds_ahead_is_tolerated():
    verify_envelope(*signed_raw(canonical_bytes(valid_dict())), RING, now=NOW - 60)


def test_an_envelope_issued_further_ahead_is_expired():
    with pytest.raises(EnvelopeExpired):
        verify_envelope(*signed_raw(canonical_bytes(valid_dict())), RING, now=NOW - 61)


def test_the_skew_allowance_is_a_parameter():
    args = signed_raw(canonical_bytes(valid_dict()))
    verify_envelope(*args, RING, now=NOW - 300, max_skew_s=300)
    with pytest.raises(EnvelopeExpired):
        verify_envelope(*args, RING, now=NOW - 1, max_skew_s=0)


@pytest.mark.parametrize("expires_at", [NOW, NOW - 1])
def test_an_envelope_that_expires_before_it_is_issued_is_expired(expires_at):
    payload = canonical_bytes(valid_dict(expires_at=expires_at))
    with pytest.raises(EnvelopeExpired):
        verify_envelope(*signed_raw(payload), RING, now=NOW - 5)


# --- peek_job_id -------------------------------------------------------------------------


def test_peek_reads_the_job_id_without_a_key():
    assert peek_job_id(SIGNED.envelope_bytes) == JOB_ID


def test_peek_reads_the_job_id_of_an_otherwise_invalid_envelope():
    # The agent must be able to fail the job a bad entry speaks for (docs/architecture.md §6).
    assert peek_job_id(b'{"job_id":"' + JOB_ID.encode() + b'","v":true}') == JOB_ID


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"null",
        b"[]",
        b"{}",
        b'{"job_id":7}',
        b'{"job_id":"prov:job:x"}',
        b'{"job_id":"01j9z3q6y8v5k2m4n7p0r1s2t3"}',
        b'{"job_id":"' + JOB_ID.encode() + b'","job_id":"' + JOB_ID.encode() + b'"}',
        b'{"job_id":"' + JOB_ID.encode() + b'","x":NaN}',
        b"\xff\xfe",
    ],
)
def test_peek_refuses_what_names_no_proper_job_id(payload):
    with pytest.raises(MalformedEnvelope):
        peek_job_id(payload)


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_peek_on_garbage_raises_only_malformed_envelope(payload):
    try:
        job_id = peek_job_id(payload)
    except MalformedEnvelope:
        return
    assert isinstance(job_id, str)


@given(st.binary(max_size=200))
def test_verify_on_garbage_raises_only_envelope_errors(payload):
    kid, sig = sign(RING, payload)
    with pytest.raises(EnvelopeError):
        verify_envelope(payload, sig, kid, RING, now=NOW)


def test_a_signed_envelope_keeps_the_envelope_out_of_its_equality():
    signed = sign_envelope(make_envelope(), RING)
    bare = SignedEnvelope(signed.envelope_bytes, signed.sig, signed.kid)
    assert bare == signed
