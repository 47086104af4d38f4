"""Fuzzing redaction: no encoding of a generated secret survives on a line that contains it.

Secrets are printable text of 8 to 64 characters, ASCII or any script. Each encoding is
built by the tool that would print it: Python's own encoders for base64, URL, hex and JSON
(with the `\\/` of PHP's json_encode and the upper-case `\\uXXXX` of others built from them),
and bash itself, through a subprocess, for `printf %q` and `declare -p`. The bash examples
are few (`max_examples=25`), each spawns a process; the others follow the profile of
`conftest.py`. Redaction is timed on CPU like the other fuzzed calls (see `timing.py`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.redaction import MASK, Redactor
from tests.property.timing import timed

# "*" is left out: a secret made of mask characters could "reappear" from a mask.
ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="*")
ANY_SCRIPT = st.characters(categories=("L", "M", "N", "P", "S", "Zs"), exclude_characters="*")
SECRETS = st.one_of(
    st.text(ASCII, min_size=8, max_size=64),
    st.text(ANY_SCRIPT, min_size=8, max_size=64),
)
# For bash: also a tab and ESC, which `printf %q` and `declare -p` write in $'...' quoting.
BASH_SECRETS = st.text(
    st.one_of(ASCII, ANY_SCRIPT, st.sampled_from("\t\x1b")), min_size=8, max_size=64
)
PREFIX = "line: "
SUFFIX = " (end)"


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def _lower_percent(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


# A \uXXXX escape: after an even number of backslashes (an odd one escapes the "\\").
_JSON_U_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([0-9a-f]{4})")


def _json(value: str) -> str:
    return json.dumps(value)[1:-1]


ENCODINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "base64": _b64,
    "base64 unpadded": lambda s: _b64(s).rstrip("="),
    "urlsafe base64": lambda s: base64.urlsafe_b64encode(s.encode()).decode(),
    "hex": lambda s: s.encode().hex(),
    "HEX": lambda s: s.encode().hex().upper(),
    "quote": quote,
    "quote safe=''": lambda s: quote(s, safe=""),
    "quote_plus": quote_plus,
    "quote lower": lambda s: _lower_percent(quote(s, safe="")),
    "quote_plus lower": lambda s: _lower_percent(quote_plus(s)),
    "encodeURIComponent": lambda s: quote(s, safe="!'()*~"),
    "json": _json,
    "json non-ascii": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    "json escaped slash": lambda s: _json(s).replace("/", "\\/"),
    "json upper-case \\u": lambda s: _JSON_U_ESCAPE.sub(
        lambda m: m[1] + "\\u" + m[2].upper(), _json(s)
    ),
    "shell": shlex.quote,
}


def _redact(redactor: Redactor, line: str) -> str:
    return timed("Redactor.redact", line, lambda: redactor.redact(line))


def _assert_hidden(secret: str, encoded: str) -> None:
    redacted = _redact(Redactor([secret]), PREFIX + encoded + SUFFIX)
    assert encoded not in redacted
    assert secret not in redacted


@pytest.mark.parametrize("encoding", ENCODINGS.values(), ids=ENCODINGS.keys())
@given(secret=SECRETS)
@example(secret="S3cr3t pa'ss$w0rd/+x")
def test_no_encoding_of_a_secret_survives(encoding, secret):
    _assert_hidden(secret, encoding(secret))


@given(secret=SECRETS, user=st.text(ASCII, max_size=5))
@example(secret="S3cr3t pa'ss$w0rd/+x", user="")
def test_every_long_enough_line_of_wrapped_base64_is_hidden(secret, user):
    # `base64 -w 20` of the secret, or of "user:secret" (an HTTP Basic credential).
    value = f"{user}:{secret}" if user else secret
    encoded = _b64(value)
    redactor = Redactor([secret])
    lines = [encoded[i : i + 20] for i in range(0, len(encoded), 20)]
    for number, line in enumerate(lines):
        redacted = _redact(redactor, line)
        carries_only_the_secret = number > 0 or not user
        if carries_only_the_secret and len(line) >= 8:
            assert MASK in redacted
            # Only characters that share bits with the user name or the padding are left.
            assert len(redacted) - len(MASK) <= 3


def _bash(script: str, value: str) -> str:
    """What bash prints for `script` with `value` as $1."""
    done = subprocess.run(
        ["bash", "-c", script, "bash", value],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C.UTF-8"},
        timeout=10,
    )
    return done.stdout.rstrip("\n")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@settings(max_examples=25)
@given(secret=BASH_SECRETS)
@example(secret="S3cr3t pa'ss$w0rd/+x")
@example(secret="~#S3cr3t\tpa'ss$w0rd/+x\x1b")
def test_bash_printf_q_and_declare_p_of_a_secret_are_hidden(secret):
    printf_q = _bash('printf %q "$1"', secret)
    _assert_hidden(secret, printf_q)
    declared = _bash('declare -x PW="$1"; declare -p PW', secret)
    assert declared.startswith("declare -x PW=")
    # The value as bash writes it, without the quotes around it.
    value = declared.removeprefix("declare -x PW=").removeprefix("$")[1:-1]
    redacted = _redact(Redactor([secret]), declared)
    assert value not in redacted
    assert secret not in redacted
