"""The HMAC key ring (docs/architecture.md §3, §7): `kid -> secret`, oldest first, the newest signs.

The key file holds one `kid:secret` per line, the secret in standard base64 and at least
32 bytes once decoded; blank lines and `#` comments are allowed. Every key verifies, only the
last one signs, so a new key is appended and the old ones stay until no unfinished job was
signed with them.

Parsing is pure. The three functions that touch the file system (`load_keyring`,
`keyfile_mode_problem`, `append_new_key`) are small and kept apart at the bottom. No error
message and no `repr` ever contains secret material: a key file's contents may end up in a
log line only through its line numbers.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

from core.errors import KeyRingError, UnknownKey

MIN_SECRET_BYTES = 32
NEW_SECRET_BYTES = 32
KID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
KEYFILE_MODE = 0o600

# Kids made by `new_key_line`: "k1", "k2", ... Other kids (hand-written ones) are allowed in
# the file but do not take part in the numbering.
_GENERATED_KID = re.compile(r"k([1-9][0-9]{0,17})")
# Standard alphabet with padding only; `b64decode(validate=True)` enforces it, this is here so
# the refusal can say what was wrong without echoing the text.
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class KeyRing:
    """An immutable ring of HMAC keys in file order; the last key is the signing key."""

    __slots__ = ("_keys", "_signing_kid")

    _keys: Mapping[str, bytes]
    _signing_kid: str

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise KeyRingError("the key ring is empty: at least one key is needed to sign")
        for kid, secret in keys.items():
            if not KID_PATTERN.fullmatch(kid):
                raise KeyRingError(f"key id {kid!r} does not match {KID_PATTERN.pattern}")
            if len(secret) < MIN_SECRET_BYTES:
                raise KeyRingError(
                    f"key {kid!r} is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed"
                )
        # A read-only view of a private copy: callers can neither mutate the ring nor
        # the mapping they passed in after the fact.
        copy = dict(keys)
        object.__setattr__(self, "_keys", MappingProxyType(copy))
        object.__setattr__(self, "_signing_kid", list(copy)[-1])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("KeyRing is immutable")

    @property
    def keys(self) -> Mapping[str, bytes]:
        """Every key, oldest first (file order)."""
        return self._keys

    @property
    def signing_kid(self) -> str:
        """The id of the newest key, the one that signs."""
        return self._signing_kid

    @property
    def signing_secret(self) -> bytes:
        """The secret of the newest key."""
        return self._keys[self.signing_kid]

    def secret(self, kid: str) -> bytes:
        """The secret of `kid`; `UnknownKey` if the ring does not hold it."""
        try:
            return self._keys[kid]
        except KeyError:
            raise UnknownKey(kid) from None

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyRing):
            return NotImplemented
        return list(self._keys.items()) == list(other._keys.items())

    def __hash__(self) -> int:
        return hash(tuple(self._keys.items()))

    def __repr__(self) -> str:
        # Kids only: a ring printed in a traceback or a log line must not leak a key.
        return f"KeyRing(kids={list(self._keys)!r}, signing_kid={self.signing_kid!r})"


def parse_keyring(text: str) -> KeyRing:
    """Parse a key file's text; `KeyRingError` names the bad line but never its secret."""
    keys: dict[str, bytes] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        kid, colon, encoded = line.partition(":")
        kid = kid.strip()
        encoded = encoded.strip()
        if not colon:
            raise KeyRingError(f"line {number}: expected 'kid:secret'")
        if not KID_PATTERN.fullmatch(kid):
            # The kid is not secret, but a line without a proper kid might be a pasted
            # secret, so it is not echoed either.
            raise KeyRingError(f"line {number}: the key id must be 1 to 64 of A-Z a-z 0-9 _ . -")
        if kid in keys:
            raise KeyRingError(f"line {number}: key id {kid!r} appears twice")
        keys[kid] = _decode_secret(encoded, number, kid)
    if not keys:
        raise KeyRingError("the key file holds no key")
    return KeyRing(keys)


def _decode_secret(encoded: str, number: int, kid: str) -> bytes:
    if not encoded:
        raise KeyRingError(f"line {number}: key {kid!r} has an empty secret")
    if not encoded.isascii() or not _BASE64_CHARS.fullmatch(encoded):
        raise KeyRingError(f"line {number}: the secret of {kid!r} is not standard base64")
    try:
        secret = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        # `from None`: the original exception's message may quote the input.
        raise KeyRingError(f"line {number}: the secret of {kid!r} is not valid base64") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyRingError(
            f"line {number}: the secret of {kid!r} is {len(secret)} bytes; "
            f"at least {MIN_SECRET_BYTES} are needed"
        )
    return secret


def format_key_line(kid: str, secret: bytes) -> str:
    """One key file line for `kid` and `secret`, with its newline."""
    if not KID_PATTERN.fullmatch(kid):
        raise KeyRingError(f"key id {kid!r} does not match {KID_PATTERN.pattern}")
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyRingError(f"a secret must be at least {MIN_SECRET_BYTES} bytes")
    return f"{kid}:{base64.b64encode(secret).decode('ascii')}\n"


def next_kid(existing: KeyRing | None) -> str:
    """The kid after the highest `kN` of the ring: `k1` for none, else `k<N+1>`."""
    highest = 0
    if existing is not None:
        for kid in existing.keys:
            if match := _GENERATED_KID.fullmatch(kid):
                highest = max(highest, int(match.group(1)))
    return f"k{highest + 1}"


def new_key_line(existing: KeyRing | None, *, secret: bytes | None = None) -> str:
    """A fresh `kid:secret` line (with newline) continuing the ring's `kN` numbering."""
    if secret is None:
        secret = secrets.token_bytes(NEW_SECRET_BYTES)
    return format_key_line(next_kid(existing), secret)


# --- the file system -------------------------------------------------------------------


def load_keyring(path: Path) -> KeyRing:
    """Read and parse the key file at `path` (see `keyfile_mode_problem` for its mode)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyRingError(f"{path}: no such key file") from None
    except UnicodeDecodeError:
        raise KeyRingError(f"{path}: the key file is not UTF-8 text") from None
    except OSError as error:
        raise KeyRingError(f"{path}: cannot read the key file ({error.strerror})") from None
    try:
        return parse_keyring(text)
    except KeyRingError as error:
        raise KeyRingError(f"{path}: {error}") from None


def keyfile_mode_problem(path: Path) -> str | None:
    """A sentence if the key file is readable or writable beyond its owner, else `None`."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as error:
        return f"{path}: cannot check the mode ({error.strerror})"
    wider = mode & ~KEYFILE_MODE & 0o777
    if wider:
        return (
            f"{path} has mode {mode:04o}; a key file should be {KEYFILE_MODE:04o} "
            f"(run: chmod 600 {path})"
        )
    return None


def append_new_key(path: Path) -> str:
    """Append a fresh key to the file at `path` (created 0600 if missing); return its kid."""
    # O_CREAT with mode 0600 gives a new file its final mode from the first instant (no
    # window where it is wider); an existing file keeps its own mode, which
    # `keyfile_mode_problem` reports. O_APPEND makes each write land at the end.
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, KEYFILE_MODE)
    except OSError as error:
        raise KeyRingError(f"{path}: cannot open the key file ({error.strerror})") from None
    try:
        # Two `keys new` at once must not both pick the same next kid: hold an exclusive
        # lock across read, number and append.
        fcntl.flock(fd, fcntl.LOCK_EX)
        existing_text = _read_all(fd, path)
        try:
            existing = parse_keyring(existing_text) if _has_keys(existing_text) else None
        except KeyRingError as error:
            # Never append to a file we cannot read back: the new key would sign jobs that
            # no agent could verify.
            raise KeyRingError(f"{path}: {error}") from None
        kid = next_kid(existing)
        line = format_key_line(kid, secrets.token_bytes(NEW_SECRET_BYTES))
        if existing_text and not existing_text.endswith("\n"):
            # A hand-edited file may lack its final newline; without this the new key
            # would be glued to the last one.
            line = "\n" + line
        data = line.encode("ascii")
        if os.write(fd, data) != len(data):
            raise KeyRingError(f"{path}: short write while appending a key")
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock
    return kid


def _read_all(fd: int, path: Path) -> str:
    chunks: list[bytes] = []
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise KeyRingError(f"{path}: the key file is not UTF-8 text") from None


def _has_keys(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("#") for line in text.splitlines())
