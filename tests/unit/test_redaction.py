"""Secrets and their encodings never survive redaction."""

from __future__ import annotations

import base64
import json
import shlex
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.redaction import MASK, Redactor, encoded_forms

SECRET = "s3cr/et p@ss+wörd'\""

ENCODINGS = {
    "raw": lambda s: s,
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
    "base64 unpadded": lambda s: base64.b64encode(s.encode()).decode().rstrip("="),
    "urlsafe base64": lambda s: base64.urlsafe_b64encode(s.encode()).decode(),
    "urlsafe base64 unpadded": lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("="),
    "quote": quote,
    "quote safe=''": lambda s: quote(s, safe=""),
    "quote_plus": quote_plus,
    "hex": lambda s: s.encode().hex(),
    "HEX": lambda s: s.encode().hex().upper(),
    "json": lambda s: json.dumps(s)[1:-1],
    "json non-ascii": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    "shell": shlex.quote,
}


@pytest.mark.parametrize("encoding", ENCODINGS.values(), ids=ENCODINGS.keys())
def test_every_encoding_of_a_secret_is_hidden(encoding):
    encoded = encoding(SECRET)
    redacted = Redactor([SECRET]).redact(f"before {encoded} after")
    assert redacted == f"before {MASK} after"


def test_every_occurrence_is_hidden():
    redactor = Redactor(["hunter22"])
    assert redactor.redact("hunter22hunter22 and hunter22.") == "****** and ***."


def test_a_secret_containing_another_is_hidden_whole():
    redactor = Redactor(["pass", "password123"])
    assert redactor.redact("pw=password123;") == "pw=***;"
    assert redactor.redact("pw=pass;") == "pw=***;"


def test_several_secrets_are_all_hidden():
    redactor = Redactor(["alpha-secret", "beta-secret"])
    text = f"a={base64.b64encode(b'alpha-secret').decode()} b=beta-secret"
    assert redactor.redact(text) == "a=*** b=***"


def test_base64_of_a_secret_inside_a_larger_value_is_hidden():
    # An HTTP Basic header: base64 of "user:password", where the password's alignment in
    # the 3-byte groups depends on the length of the user name.
    for user in ("a", "ab", "abc"):
        header = base64.b64encode(f"{user}:correct-horse-battery".encode()).decode()
        redacted = Redactor(["correct-horse-battery"]).redact(f"Authorization: Basic {header}")
        assert header not in redacted
        assert MASK in redacted


def test_empty_secrets_are_ignored():
    redactor = Redactor(["", ""])
    assert not redactor
    assert redactor.redact("nothing to hide") == "nothing to hide"
    assert encoded_forms("") == set()


def test_text_without_a_secret_is_unchanged():
    assert Redactor(["hunter22"]).redact("hunter2 is not it") == "hunter2 is not it"


def test_regex_characters_in_a_secret_are_literal():
    redactor = Redactor([".*+?[](){}|^$\\"])
    assert redactor.redact("x .*+?[](){}|^$\\ y") == "x *** y"
    assert redactor.redact("anything else") == "anything else"


def test_a_cut_line_ending_in_the_start_of_a_secret_hides_that_start():
    redactor = Redactor(["correct-horse"])
    assert redactor.redact_truncated("password is correct-ho") == "password is ***"
    assert redactor.redact_truncated("the full correct-horse") == "the full ***"
    # Two characters reveal next to nothing and are left, so cut lines stay readable.
    assert redactor.redact_truncated("ends in co") == "ends in co"


# Printable text of any script; "*" is left out because a secret made of mask characters
# could "reappear" from a mask and its neighbours ("a***" in "a" + "***") without leaking.
printable = st.characters(categories=("L", "M", "N", "P", "S", "Zs"), exclude_characters="*")


@pytest.mark.parametrize("encoding", ENCODINGS.values(), ids=ENCODINGS.keys())
@given(
    secret=st.text(printable, min_size=4, max_size=40),
    prefix=st.text(max_size=20),
    suffix=st.text(max_size=20),
)
@example(secret="abab", prefix="ab", suffix="ab")
@example(secret="aaaa", prefix="a", suffix="a")
def test_no_encoding_of_a_secret_survives_whatever_surrounds_it(encoding, secret, prefix, suffix):
    encoded = encoding(secret)
    redacted = Redactor([secret]).redact(prefix + encoded + suffix)
    assert encoded not in redacted
