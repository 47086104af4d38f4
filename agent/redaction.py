r"""Hide secrets in installer output before it is stored: the raw value and its common encodings.

A script may echo a password as is, or pass it through a tool that prints it base64-encoded
(an HTTP Basic header), URL-encoded (a connection string), hex-encoded, JSON-escaped or
shell-quoted. Every such form of every secret is replaced by `***`.

Besides the fixed forms of `encoded_forms`, three patterns per secret match whatever a
decoder would turn back into the secret, so the exact choices of the encoding tool do not
matter:

- URL: each character as is or as `%XX` (either case), a space also as `+`;
- JSON: each character as is, as a short escape (`\"`, `\\`, `\/`, `\t`...) or as
  `\uXXXX` (either case, surrogate pairs outside the BMP);
- shell: each character as is or behind a backslash (bash's `printf %q`, the double quotes of
  `declare -p`/`export -p`), and inside ANSI-C quoting (`$'...'`, which bash uses for
  non-printable characters, and for non-ASCII ones outside a UTF-8 locale) as `\t`, `\E`...
  or octal bytes.

Redaction works on one line at a time. A secret itself never spans a line: passwords cannot
contain a newline (validation refuses newlines outside `text` inputs), and none of the
encodings above introduces one. A tool that wraps base64 output across lines (`base64` wraps
at 76 columns, `base64 -w 20` at 20) does split the encoding of a long enough secret. Each
line is then checked on its own: every run of at least 8 base64 characters that occurs in
one of the secret's base64 encodings (the standalone one; inside a larger value, in any of
the three alignments, the characters that depend on the secret alone, up to the padding when
the secret ends the value, as in "user:password") is hidden, so every piece of 8 characters
or more of a wrapped encoding is hidden on its line. What is not caught: a piece shorter than
8 characters (typically the last line of the wrapped output, which then reveals up to 5 bytes
of the secret), and the one or two characters at each end of the secret's part that share
bits with its neighbours in a larger value. Such a 7-character piece may also stand as a
whole line of ordinary text, which is why shorter pieces are not hidden anyway.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from collections.abc import Callable, Iterable
from urllib.parse import quote, quote_plus

MASK = "***"

# Base64 of a secret embedded in a larger value (base64 of "user:password") depends on where
# the secret falls relative to the 3-byte groups; the characters that encode only the secret's
# bits are stable for each of the three alignments. Those cores are matched too, but only when
# long enough that they cannot hide ordinary words by chance.
_MIN_EMBEDDED_BASE64_CHARS = 8
# A line cut short by the runner may end in the first part of a secret; a trailing part at
# least this long is hidden. Two characters of a secret reveal next to nothing, and hiding
# every cut line's last character whenever some secret starts with it would be noise.
_MIN_PARTIAL_CHARS = 3

_Encoder = Callable[[bytes], bytes]
_BASE64_ALPHABETS: tuple[_Encoder, ...] = (base64.b64encode, base64.urlsafe_b64encode)
# Pieces are looked for only where a 4-character slice at a multiple of 5 is part of one:
# any 8 consecutive characters contain such a slice.
_QUAD = 4
_PIECE_STRIDE = _MIN_EMBEDDED_BASE64_CHARS - _QUAD + 1
# A run of characters of either base64 alphabet, padding included, long enough to be a piece.
_BASE64_RUN = re.compile(rf"[A-Za-z0-9+/_=-]{{{_MIN_EMBEDDED_BASE64_CHARS},}}")

# Characters bash's `printf %q` puts a backslash before (anywhere; "~" and "#" only first).
_BASH_SPECIAL = frozenset(" \t\n'\"\\|&;()<>!{}*[?]^$`,")
# Characters escaped inside the double quotes of `declare -p` and `export -p`.
_BASH_DOUBLE_QUOTED = re.compile(r'["$`\\]')
# Every spelling `encoded_patterns` matches, other than the secret itself, has one of these.
_ESCAPE_CHARACTERS = ("\\", "%", "+")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")
# Letters of the ANSI-C escapes ($'...') of control characters; bash writes ESC as \E.
_ANSI_C_LETTERS = {
    "\a": "a",
    "\b": "b",
    "\x1b": "eE",
    "\f": "f",
    "\n": "n",
    "\r": "r",
    "\t": "t",
    "\v": "v",
}
_JSON_SHORT_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "\b": "b",
    "\f": "f",
    "\n": "n",
    "\r": "r",
    "\t": "t",
}


def encoded_forms(secret: str) -> set[str]:
    """Every fixed form of `secret` that `Redactor` hides (empty for an empty secret).

    `encoded_patterns` covers more spellings of the URL, JSON and shell forms.
    """
    if not secret:
        return set()
    raw = secret.encode("utf-8", "surrogatepass")
    url_forms = {
        quote(secret, safe=""),
        quote(secret),  # keeps "/" as is, the default of most URL builders
        quote_plus(secret),
        quote_plus(secret, safe="/"),
    }
    json_forms = {
        json.dumps(secret)[1:-1],  # ensure_ascii: non-ASCII as \uXXXX
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    forms = {
        secret,
        raw.hex(),
        raw.hex().upper(),
        *url_forms,
        *(_PERCENT_ESCAPE.sub(lambda m: m.group().lower(), form) for form in url_forms),
        *json_forms,
        *(form.replace("/", "\\/") for form in json_forms),  # PHP's json_encode
        shlex.quote(secret),
        _bash_printf_q(secret),
        _BASH_DOUBLE_QUOTED.sub(r"\\\g<0>", secret),  # declare -p, export -p
    }
    for encode in _BASE64_ALPHABETS:
        padded = encode(raw).decode("ascii")
        forms.add(padded)
        forms.add(padded.rstrip("="))
        forms.update(_embedded_base64_cores(raw, encode))
    forms.discard("")
    return forms


def encoded_patterns(secret: str) -> list[str]:
    """Regular expressions for the URL, JSON and shell spellings of `secret` (see above)."""
    if not secret:
        return []
    return [
        "".join(map(_url_char, secret)),
        "".join(map(_json_char, secret)),
        "".join(map(_shell_char, secret)),
    ]


def _bash_printf_q(secret: str) -> str:
    """What bash's `printf %q` prints for a secret of printable characters."""
    quoted = "".join("\\" + char if char in _BASH_SPECIAL else char for char in secret)
    return "\\" + quoted if quoted[:1] in ("~", "#") else quoted


def _any_case(hex_digits: str) -> str:
    """A regex matching `hex_digits` in upper, lower or mixed case."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in hex_digits)


def _alternatives(options: Iterable[str]) -> str:
    return "(?:" + "|".join(options) + ")"


def _url_char(char: str) -> str:
    encoded = "".join(
        "%" + _any_case(f"{byte:02X}") for byte in char.encode("utf-8", "surrogatepass")
    )
    options = [re.escape(char), encoded]
    if char == " ":
        options.append(r"\+")
    return _alternatives(options)


def _json_char(char: str) -> str:
    units = char.encode("utf-16-be", "surrogatepass")
    escaped = "".join(r"\\u" + _any_case(units[i : i + 2].hex()) for i in range(0, len(units), 2))
    options = [re.escape(char), escaped]
    if char in _JSON_SHORT_ESCAPES:
        options.append(r"\\" + re.escape(_JSON_SHORT_ESCAPES[char]))
    return _alternatives(options)


def _shell_char(char: str) -> str:
    options = [r"\\?" + re.escape(char)]
    if char in _ANSI_C_LETTERS:
        options.append(r"\\[" + _ANSI_C_LETTERS[char] + "]")
    if not (char.isascii() and char.isprintable()):
        options.append("".join(rf"\\{byte:03o}" for byte in char.encode("utf-8", "surrogatepass")))
    return _alternatives(options)


def _embedded_base64_cores(raw: bytes, encode: _Encoder) -> set[str]:
    """The characters of base64(prefix + raw + suffix) that depend on `raw` alone."""
    cores: set[str] = set()
    for offset in range(3):
        encoded = encode(b"\0" * offset + raw).decode("ascii")
        # Character k carries bits 6k..6k+5: skip those that share bits with the prefix or
        # with whatever follows the secret.
        start = -(-8 * offset // 6)
        end = 8 * (offset + len(raw)) // 6
        core = encoded[start:end]
        if len(core) >= _MIN_EMBEDDED_BASE64_CHARS:
            cores.add(core)
    return cores


def _base64_pieces(secret: str) -> set[str]:
    """Every run of `_MIN_EMBEDDED_BASE64_CHARS` characters of a base64 encoding of `secret`.

    The encodings: the secret's own, the cores of `_embedded_base64_cores`, and for a secret
    that ends a larger value (the password of "user:password") the characters from its
    first own one to the end, padding included.
    """
    raw = secret.encode("utf-8", "surrogatepass")
    size = _MIN_EMBEDDED_BASE64_CHARS
    pieces: set[str] = set()
    for encode in _BASE64_ALPHABETS:
        encodings = {encode(raw).decode("ascii"), *_embedded_base64_cores(raw, encode)}
        for offset in (1, 2):
            encodings.add(encode(b"\0" * offset + raw).decode("ascii")[-(-8 * offset // 6) :])
        for encoded in encodings:
            pieces.update(encoded[i : i + size] for i in range(len(encoded) - size + 1))
    return pieces


class Redactor:
    """Replaces every secret, and each of its common encodings, by `***`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        # (shortest match, regex) of each pattern: a fixed form is its own shortest match.
        patterns: set[tuple[int, str]] = set()
        pieces: set[str] = set()
        for secret in secrets:
            forms |= encoded_forms(secret)
            patterns.update((len(secret), pattern) for pattern in encoded_patterns(secret))
            if secret:
                pieces |= _base64_pieces(secret)
        patterns.update((len(form), re.escape(form)) for form in forms)
        # Longest first: the regex engine takes the first alternative that matches at a
        # position, so a secret that contains another is hidden whole, not cut in two.
        self._forms = sorted(forms, key=lambda form: (-len(form), form))
        self._pattern = re.compile("|".join(map(re.escape, self._forms))) if self._forms else None
        # Without one of `_ESCAPE_CHARACTERS`, a match of a pattern is the secret itself, so
        # most lines only need the (much faster) search for the fixed forms.
        ordered = [pattern for _, pattern in sorted(patterns, key=lambda p: (-p[0], p[1]))]
        self._escaped_pattern = re.compile("|".join(ordered)) if ordered else None
        self._base64_pieces = frozenset(pieces)
        # A piece contains a 4-character slice starting at a multiple of `_PIECE_STRIDE`.
        self._base64_quads = frozenset(
            piece[i : i + _QUAD] for piece in pieces for i in range(len(piece) - _QUAD + 1)
        )

    def __bool__(self) -> bool:
        """Whether there is anything to hide."""
        return self._pattern is not None

    def redact(self, text: str) -> str:
        """`text` with every occurrence of a secret's form replaced by `***`."""
        if self._pattern is None or self._escaped_pattern is None:
            return text
        if any(char in text for char in _ESCAPE_CHARACTERS):
            text = self._escaped_pattern.sub(MASK, text)
        else:
            text = self._pattern.sub(MASK, text)
        return self._hide_base64_pieces(text)

    def _hide_base64_pieces(self, text: str) -> str:
        """`text` with every stretch of base64 made of pieces of a secret's encoding hidden."""
        if not self._base64_pieces:
            return text
        quads = self._base64_quads
        if not any(
            text[i : i + _QUAD] in quads for i in range(0, len(text) - _QUAD + 1, _PIECE_STRIDE)
        ):
            return text
        size = _MIN_EMBEDDED_BASE64_CHARS
        spans: list[list[int]] = []
        for run in _BASE64_RUN.finditer(text):
            for start in range(run.start(), run.end() - size + 1):
                if text[start : start + size] in self._base64_pieces:
                    if spans and start <= spans[-1][1]:
                        spans[-1][1] = start + size
                    else:
                        spans.append([start, start + size])
        if not spans:
            return text
        parts: list[str] = []
        last = 0
        for start, end in spans:
            parts += (text[last:start], MASK)
            last = end
        parts.append(text[last:])
        return "".join(parts)

    def redact_truncated(self, text: str) -> str:
        """Like `redact`, for a line cut short: a secret's beginning at the very end is hidden."""
        redacted = self.redact(text)
        longest = 0
        for form in self._forms:
            # A whole form at the end was already replaced; only a proper prefix is left.
            for size in range(min(len(form) - 1, len(redacted)), longest, -1):
                if size >= _MIN_PARTIAL_CHARS and redacted.endswith(form[:size]):
                    longest = size
                    break
        if longest == 0:
            return redacted
        return redacted[:-longest] + MASK
