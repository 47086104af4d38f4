"""Fuzzing the small strict parsers: each raises only its typed error, quickly.

- `check_pattern` (regex safety): UnsafePatternError or re.error; and a pattern it accepts
  never backtracks catastrophically on an adversarial string.
- `strict_loads`: StrictJSONError.
- `event_from_fields` (and the replay of what it returns): TamperError.
- envelope reading and `verify_envelope`, on random bytes and on validly signed random
  JSON, so the strict shape check behind the HMAC is reached: EnvelopeError.
- `parse_keyring`: KeyRingError, never echoing a secret.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core.errors import EnvelopeError, KeyRingError, TamperError
from core.keyring import KeyRing, parse_keyring
from core.manifest.regex_safety import UnsafePatternError, check_pattern
from core.signing import peek_job_id, read_stream_fields, sign, verify_envelope
from core.strict_json import StrictJSONError, strict_loads
from statemachine.events import FIELD_NAMES, Event, event_from_fields, integrity_problems, new_event
from statemachine.replay import replay_events
from tests.property.strategies import ANY, EVIL_REGEXES, REGEXES
from tests.property.timing import refusal, timed

RING = KeyRing({"k1": b"\x01" * 32, "k2": b"\x02" * 32})
NOW = 1_764_230_400
JOB_ID = "01JDQ5V2ZK8Y7X9W6V5T4S3R2Q"

# -- regex safety --------------------------------------------------------------------------

ADVERSARIAL = st.builds(
    lambda char, count, tail: char * count + tail,
    st.sampled_from(["a", "x", "0", " ", "é", "ab"]),
    st.integers(10, 24),
    st.sampled_from(["", "!", "\n", "A", "b", "y"]),
)


# `[[`, `--`, `&&`... in a class make the standard parser warn that their meaning may change.
@pytest.mark.filterwarnings("ignore:Possible :FutureWarning")
@given(REGEXES, ADVERSARIAL)
@example("(a+)+$", "a" * 24 + "!")
@example("(\\w+\\s?)*$", "a" * 24 + "!")
def test_a_pattern_is_refused_or_safe_to_match(pattern, subject):
    try:
        timed("check_pattern", pattern, lambda: check_pattern(pattern))
    except (UnsafePatternError, re.error):
        return
    compiled = re.compile(pattern)
    # Accepted: matching a string built to make backtracking explode stays cheap.
    timed("accepted pattern fullmatch", (pattern, subject), lambda: compiled.fullmatch(subject))


@given(EVIL_REGEXES)
def test_the_known_catastrophic_patterns_are_refused(pattern):
    with pytest.raises(UnsafePatternError):
        check_pattern(pattern)


# -- strict JSON ---------------------------------------------------------------------------


def _json_values(numbers: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | numbers | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=5), children, max_size=4)
        ),
        max_leaves=15,
    )


JSON_VALUES = _json_values(st.floats())
FINITE_JSON_VALUES = _json_values(st.floats(allow_nan=False, allow_infinity=False))
JSON_TEXT = st.one_of(
    JSON_VALUES.map(lambda value: json.dumps(value, allow_nan=True)),
    st.text(max_size=60),
    st.binary(max_size=60),
    st.integers(1, 3000).map(lambda n: "[" * n),
    st.integers(1, 1500).map(lambda n: '{"a":' * n),
    st.integers(4000, 6000).map(lambda n: "9" * n),
    st.sampled_from(
        ['{"a":1,"a":2}', "NaN", "[Infinity]", "-Infinity", '"\\ud800"', "\ufeff{}", "1e999"]
    ),
    st.sampled_from(["utf-16", "utf-32", "latin-1"]).map('{"é":1}'.encode),
)


@given(JSON_TEXT)
def test_strict_json_raises_only_its_own_error(text):
    refusal(StrictJSONError, lambda: timed("strict_loads", text, lambda: strict_loads(text)))


# -- events ----------------------------------------------------------------------------------


def _real_event_fields(detail: dict[str, Any]) -> dict[str, str]:
    event = new_event(
        RING,
        job_id=JOB_ID,
        trigger="submit",
        src="",
        dst="queued",
        at=NOW * 1000,
        actor="panel:alice",
        attempt=0,
        detail=detail,
        prev="",
    )
    return event.stream_fields()


FIELD_VALUES = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=20),
    st.sampled_from(["-1", "1.5", "٣", "99999999999999999999999999", "", "{}", "[]", "null"]),
    JSON_TEXT.map(lambda value: value if isinstance(value, str) else value.decode("latin-1")),
)


@st.composite
def event_fields(draw: st.DrawFn) -> dict[Any, Any]:
    """A real event's stream fields with some mutated, dropped or added; or anything."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), FIELD_VALUES))
    fields: dict[Any, Any] = dict(
        _real_event_fields(
            draw(st.dictionaries(st.text(max_size=5), FINITE_JSON_VALUES, max_size=3))
        )
    )
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["change", "drop", "add", "bytes"]))
        name = draw(st.sampled_from(FIELD_NAMES))
        if action == "change":
            fields[name] = draw(FIELD_VALUES)
        elif action == "drop":
            fields.pop(name, None)
        elif action == "add":
            fields[draw(st.text(max_size=6))] = draw(FIELD_VALUES)
        else:
            value = fields.get(name, "")
            fields[name.encode()] = value.encode() if isinstance(value, str) else value
            fields.pop(name, None)
    return fields


@given(event_fields())
def test_event_fields_parse_or_raise_tamper_error_and_replay_never_crashes(fields):
    _parse_and_replay(fields)


def test_a_detail_with_a_lone_surrogate_escape_is_tampering_not_a_crash():
    fields = {**_real_event_fields({}), "detail": '{"x":"\\ud800"}'}
    with pytest.raises(TamperError, match="lone surrogate"):
        event_from_fields(fields)
    _parse_and_replay(fields)


def test_a_mac_with_non_ascii_text_is_a_bad_mac_not_a_crash():
    event = event_from_fields({**_real_event_fields({}), "mac": "é" * 64})
    assert integrity_problems(event, RING) == ["bad mac"]
    assert [problem.problem for problem in replay_events(JOB_ID, [event], RING).problems] == [
        "bad mac"
    ]


def _parse_and_replay(fields: dict[Any, Any]) -> None:
    parsed: list[Event] = []
    error = refusal(
        TamperError,
        lambda: parsed.append(
            timed("event_from_fields", fields, lambda: event_from_fields(fields))
        ),
    )
    if error is not None:
        assert isinstance(error, TamperError) and error.problem
        return
    event = parsed[0]
    # What parses is then checked the way replay checks it: a list of problems, no crash.
    timed("integrity_problems", fields, lambda: integrity_problems(event, RING))
    replayed = timed("replay_events", fields, lambda: replay_events(JOB_ID, [event], RING))
    assert replayed.event_count == 1


# -- envelopes -------------------------------------------------------------------------------

ENVELOPE_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, True, 2, "1", 1.0]),
        "job_id": st.sampled_from([JOB_ID, "x", JOB_ID.lower(), "../x", ""]) | st.text(max_size=5),
        "app_id": st.text(max_size=8),
        "app_fingerprint": st.text(max_size=8),
        "target": st.sampled_from(["local", "", "a:b"]),
        "inputs": st.dictionaries(st.text(max_size=5), st.text(max_size=5) | JSON_VALUES)
        | JSON_VALUES,
        "sealed": st.dictionaries(st.text(max_size=5), st.text(max_size=5) | JSON_VALUES)
        | JSON_VALUES,
        "requested_by": st.text(max_size=8),
        "issued_at": st.sampled_from([NOW, NOW + 120, 0, -1, 10**30, True]) | JSON_VALUES,
        "expires_at": st.sampled_from([NOW + 3600, NOW - 1, NOW, 10**30]) | JSON_VALUES,
        "kid": st.sampled_from(["k1", "k2", "k3", ""]),
        "extra": JSON_VALUES,
    },
)
ENVELOPE_BYTES = st.one_of(
    ENVELOPE_LIKE.map(
        lambda obj: json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8", "surrogatepass")
    ),
    st.binary(max_size=100),
    JSON_TEXT.map(
        lambda value: value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    ),
)


@given(ENVELOPE_BYTES, st.sampled_from(["k1", "k2", "k3", "", "K1"]), st.booleans())
def test_verifying_any_signed_bytes_raises_only_envelope_errors(envelope, kid, sign_it):
    # Signed with the ring, random bytes get past the HMAC into the strict shape checks.
    if sign_it and kid in RING:
        signed_kid, sig = sign(KeyRing({kid: RING.secret(kid)}), envelope)
        assert signed_kid == kid
    else:
        sig = "0" * 64
    error = refusal(
        EnvelopeError,
        lambda: timed(
            "verify_envelope", envelope, lambda: verify_envelope(envelope, sig, kid, RING, now=NOW)
        ),
    )
    if error is not None:
        assert isinstance(error, EnvelopeError)
        assert error.reason in {"malformed", "unknown_key", "bad_signature", "expired"}


@given(st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), ANY | st.binary(), max_size=5))
def test_reading_any_stream_entry_raises_only_envelope_errors(fields):
    try:
        signed = timed("read_stream_fields", fields, lambda: read_stream_fields(fields))
    except EnvelopeError:
        return
    refusal(
        EnvelopeError,
        lambda: timed("peek_job_id", signed, lambda: peek_job_id(signed.envelope_bytes)),
    )


@given(ENVELOPE_BYTES)
def test_peeking_at_any_bytes_raises_only_envelope_errors(envelope):
    try:
        job_id = timed("peek_job_id", envelope, lambda: peek_job_id(envelope))
    except EnvelopeError:
        return
    assert job_id == JOB_ID


# -- key files -----------------------------------------------------------------------------

SECRET_B64 = base64.b64encode(b"S" * 32).decode()


@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [f"k1:{SECRET_B64}", f"k2:{SECRET_B64}", "# comment", "", "k1", ":", "k3:"]
            ),
            st.text(max_size=30),
            st.builds(lambda kid, secret: f"{kid}:{secret}", st.text(max_size=6), st.text()),
        ),
        max_size=6,
    ).map("\n".join)
)
def test_a_key_file_parses_or_raises_a_key_ring_error_without_its_secret(text):
    error = refusal(KeyRingError, lambda: timed("parse_keyring", text, lambda: parse_keyring(text)))
    assert error is None or SECRET_B64 not in str(error)
