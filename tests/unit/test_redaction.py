"""Secrets and their encodings never survive redaction."""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
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


# -- the red team's findings ---------------------------------------------------------------

# The red team's example: a space, a quote, a dollar, a slash and a plus.
RED_TEAM_SECRET = "S3cr3t pa'ss$w0rd/+x"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def bash(script: str, value: str, *, locale: str = "C.UTF-8") -> str:
    """What bash prints for `script` run with `value` as $1 (the real tool, not a copy)."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": locale}
    done = subprocess.run(
        ["bash", "-c", script, "bash", value],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=10,
    )
    return done.stdout.rstrip("\n")


@needs_bash
def test_bash_printf_q_of_a_secret_is_hidden():
    printed = bash('printf %q "$1"', RED_TEAM_SECRET)
    assert printed == r"S3cr3t\ pa\'ss\$w0rd/+x"  # backslashes, no quotes
    assert Redactor([RED_TEAM_SECRET]).redact(f"pw={printed} ok") == f"pw={MASK} ok"


@needs_bash
@pytest.mark.parametrize(
    ("secret", "locale"),
    [
        ("S3cr3t\tpa'ss$w0rd/+x", "C.UTF-8"),  # a control character
        ("S3cr3t\x1bpa'ss$w0rd/+x", "C.UTF-8"),  # ESC, written \E
        ("S3cr3t pa'ss$wörd/+x", "C"),  # non-ASCII outside a UTF-8 locale: octal bytes
    ],
    ids=["tab", "escape", "non-ascii in C locale"],
)
def test_bash_printf_q_ansi_c_quoting_of_a_secret_is_hidden(secret, locale):
    printed = bash('printf %q "$1"', secret, locale=locale)
    assert printed.startswith("$'")
    assert Redactor([secret]).redact(f"pw={printed} ok") == f"pw=$'{MASK}' ok"


@needs_bash
def test_bash_declare_p_of_a_secret_is_hidden():
    printed = bash('declare -x PW="$1"; declare -p PW', RED_TEAM_SECRET)
    assert printed == r'declare -x PW="S3cr3t pa' + "'" + r'ss\$w0rd/+x"'
    assert Redactor([RED_TEAM_SECRET]).redact(printed) == f'declare -x PW="{MASK}"'
    exported = bash('export PW="$1"; export -p | grep " PW="', RED_TEAM_SECRET)
    assert Redactor([RED_TEAM_SECRET]).redact(exported) == f'declare -x PW="{MASK}"'


def _lower_percent(text: str) -> str:
    return "%".join(
        part[:2].lower() + part[2:] if i else part for i, part in enumerate(text.split("%"))
    )


@pytest.mark.parametrize(
    "encoded",
    [
        _lower_percent(quote(RED_TEAM_SECRET, safe="")),  # %20 for space, lower case
        _lower_percent(quote_plus(RED_TEAM_SECRET)),  # + for space, lower case
        _lower_percent(quote(RED_TEAM_SECRET)),  # "/" kept, lower case
        "S3cr3t%20pa'ss%24w0rd%2F%2Bx",  # JavaScript's encodeURIComponent keeps "'"
        "S3cr3t+pa%27ss%24w0rd%2F%2Bx".replace("%27", "'"),  # + for space, "'" kept
    ],
)
def test_lower_case_and_other_url_encodings_of_a_secret_are_hidden(encoded):
    assert "%" in encoded
    redacted = Redactor([RED_TEAM_SECRET]).redact(f"postgres://app:{encoded}@db/app")
    assert redacted == f"postgres://app:{MASK}@db/app"


@pytest.mark.parametrize(
    ("secret", "encoded"),
    [
        # PHP's json_encode: "\/" for a slash.
        (RED_TEAM_SECRET, json.dumps(RED_TEAM_SECRET)[1:-1].replace("/", "\\/")),
        # PHP's json_encode again: "\/" and non-ASCII as \uXXXX together.
        ("S3cr3t pa'ss$wörd/+x", json.dumps("S3cr3t pa'ss$wörd/+x")[1:-1].replace("/", "\\/")),
        # Upper-case hex digits in \uXXXX (Jackson and others).
        ("S3cr3t pa'ss$wörd/+x", json.dumps("S3cr3t pa'ss$wörd/+x")[1:-1].replace("f6", "F6")),
        # Outside the BMP: a surrogate pair.
        ("S3cr3t pa'ss$w😀rd/+x", json.dumps("S3cr3t pa'ss$w😀rd/+x")[1:-1]),
    ],
    ids=["escaped slash", "escaped slash and non-ascii", "upper-case \\u", "surrogate pair"],
)
def test_json_escapes_of_a_secret_are_hidden(secret, encoded):
    redacted = Redactor([secret]).redact(f'{{"password": "{encoded}"}}')
    assert redacted == f'{{"password": "{MASK}"}}'


def wrapped_base64(value: bytes, width: int = 20) -> list[str]:
    """`base64 -w 20` output, one line per item."""
    encoded = base64.b64encode(value).decode()
    return [encoded[i : i + width] for i in range(0, len(encoded), width)]


def test_base64_of_a_secret_wrapped_at_20_columns_is_hidden_on_every_line():
    lines = wrapped_base64(RED_TEAM_SECRET.encode())
    assert lines == ["UzNjcjN0IHBhJ3NzJHcw", "cmQvK3g="]
    redactor = Redactor([RED_TEAM_SECRET])
    assert [redactor.redact(line) for line in lines] == [MASK, MASK]


def test_wrapped_base64_of_a_secret_inside_a_larger_value_is_hidden_on_every_line():
    secret = "correct-horse-battery-staple-42"
    redactor = Redactor([secret])
    for user in ("a", "ab", "abc"):
        lines = wrapped_base64(f"{user}:{secret}".encode())
        redacted = [redactor.redact(line) for line in lines]
        # Left: the characters that carry bits of "user:"; at the end, the characters that
        # share bits with the padding, or a whole last line shorter than 8 characters (the
        # documented limit).
        user_chars = -(-8 * len(f"{user}:") // 6)
        assert redacted[0] == lines[0][:user_chars] + MASK, user
        assert all(line == MASK for line in redacted[1:-1]), user
        last = redacted[-1]
        if len(lines[-1]) >= 8:
            assert last.startswith(MASK) and len(last) <= len(MASK) + 3, user
        else:
            assert last == lines[-1], user


def test_base64_pieces_do_not_hide_ordinary_text_or_other_base64():
    redactor = Redactor([RED_TEAM_SECRET])
    other = base64.b64encode(b"an unrelated value of some length").decode()
    line = f"password accepted, token {other}, see https://example.com/a/b+c?d=1%2C2"
    assert redactor.redact(line) == line
