"""Hide secrets in installer output before it is stored: the raw value and its common encodings.

A script may echo a password as is, or pass it through a tool that prints it base64-encoded
(an HTTP Basic header), URL-encoded (a connection string), hex-encoded, JSON-escaped or
shell-quoted. Every such form of every secret is replaced by `***`.

Redaction works on one line at a time, which is enough because a secret never spans a line:
passwords cannot contain a newline (validation refuses newlines outside `text` inputs), and
none of the encodings below introduces one. A tool that wraps long base64 output across lines
(`base64` wraps at 76 columns) could still split the encoding of a secret longer than 57
bytes; such a split is not caught.
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


def encoded_forms(secret: str) -> set[str]:
    """Every form of `secret` that `Redactor` hides (empty for an empty secret)."""
    if not secret:
        return set()
    raw = secret.encode("utf-8", "surrogatepass")
    forms = {
        secret,
        raw.hex(),
        raw.hex().upper(),
        quote(secret, safe=""),
        quote(secret),  # keeps "/" as is, the default of most URL builders
        quote_plus(secret),
        quote_plus(secret, safe="/"),
        json.dumps(secret)[1:-1],  # ensure_ascii: non-ASCII as \uXXXX
        json.dumps(secret, ensure_ascii=False)[1:-1],
        shlex.quote(secret),
    }
    for encode in _BASE64_ALPHABETS:
        padded = encode(raw).decode("ascii")
        forms.add(padded)
        forms.add(padded.rstrip("="))
        forms.update(_embedded_base64_cores(raw, encode))
    forms.discard("")
    return forms


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


class Redactor:
    """Replaces every secret, and each of its common encodings, by `***`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            forms |= encoded_forms(secret)
        # Longest first: the regex engine takes the first alternative that matches at a
        # position, so a secret that contains another is hidden whole, not cut in two.
        self._forms = sorted(forms, key=lambda form: (-len(form), form))
        self._pattern = re.compile("|".join(map(re.escape, self._forms))) if self._forms else None

    def __bool__(self) -> bool:
        """Whether there is anything to hide."""
        return self._pattern is not None

    def redact(self, text: str) -> str:
        """`text` with every occurrence of a secret's form replaced by `***`."""
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

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
