"""Sealed secrets (docs/architecture.md §3): `password` inputs travel as AES-256-GCM ciphertext.

Key separation: every key-ring secret is used for HMAC signing as it is, and never directly
for anything else. Sealing and fingerprinting use keys derived from it with HKDF-SHA256, each
under its own `info` label, so a value computed under one purpose can never be replayed as
another (a fingerprint is not a signature, a signature is not an AES key):

    ring secret of kid ──HKDF(info=b"provision/seal/v1")─────────────> AES-256 key of kid
    ring secret of the signing kid ──HKDF(info=b"provision/secret-fingerprint/v1")──> HMAC key

The HKDF salt is the fixed public string `HKDF_SALT`; it is a domain separator, not a secret
(RFC 5869 §3.1: a fixed salt is fine when the input key is already uniformly random).

A sealed token is `base64(nonce[12] || ciphertext || tag[16])`, standard alphabet, no newline.
The associated data binds the token to its job and its input name, so a token copied into
another job or another field of the same job fails to open. Nothing in this module ever puts
a plaintext into an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.errors import SealError, UnknownKey
from core.keyring import KeyRing

HKDF_SALT = b"provision-panel hkdf salt v1"
SEAL_INFO = b"provision/seal/v1"
FINGERPRINT_INFO = b"provision/secret-fingerprint/v1"
FINGERPRINT_PREFIX = "hmac-sha256:"

NONCE_BYTES = 12
TAG_BYTES = 16
_AES_KEY_BYTES = 32

InputValue = str | list[str]


def derive_key(secret: bytes, info: bytes) -> bytes:
    """A 32-byte key for one use (`info` names it), derived from a ring secret with HKDF."""
    # A fresh HKDF object per call: cryptography's KDFs may be used only once.
    hkdf = HKDF(algorithm=hashes.SHA256(), length=_AES_KEY_BYTES, salt=HKDF_SALT, info=info)
    return hkdf.derive(secret)


def _associated_data(job_id: str, name: str) -> bytes:
    # JSON of a list is an unambiguous encoding of the pair: ("a:b", "c") and ("a", "b:c")
    # cannot collide, as they could with a plain separator.
    return json.dumps(["provision/seal/v1", job_id, name], ensure_ascii=True).encode("ascii")


def _seal_key(ring: KeyRing, kid: str) -> bytes:
    try:
        return derive_key(ring.secret(kid), SEAL_INFO)
    except UnknownKey:
        raise SealError(f"cannot seal or open under unknown key id {kid!r}") from None


def seal_secret(ring: KeyRing, kid: str, *, job_id: str, name: str, value: str) -> str:
    """Encrypt `value` for input `name` of job `job_id` under `kid`; base64 token."""
    aesgcm = AESGCM(_seal_key(ring, kid))
    nonce = os.urandom(NONCE_BYTES)  # random 96-bit nonce: safe far beyond our volume
    ciphertext = aesgcm.encrypt(nonce, value.encode("utf-8"), _associated_data(job_id, name))
    return base64.b64encode(nonce + ciphertext).decode("ascii")


def open_secret(ring: KeyRing, kid: str, *, job_id: str, name: str, token: str) -> str:
    """Decrypt a token made by `seal_secret`; `SealError` on any mismatch or damage."""
    try:
        raw = base64.b64decode(token.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        raise SealError(f"sealed value of {name!r} is not valid base64") from None
    if len(raw) < NONCE_BYTES + TAG_BYTES:
        raise SealError(f"sealed value of {name!r} is too short")
    aesgcm = AESGCM(_seal_key(ring, kid))
    try:
        plaintext = aesgcm.decrypt(
            raw[:NONCE_BYTES], raw[NONCE_BYTES:], _associated_data(job_id, name)
        )
    except InvalidTag:
        raise SealError(
            f"sealed value of {name!r} does not open for job {job_id} under key {kid!r}"
        ) from None
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError:
        raise SealError(f"sealed value of {name!r} is not UTF-8 text") from None


def secret_fingerprint(ring: KeyRing, value: str, *, kid: str | None = None) -> str:
    """A keyed hash of a secret for the audit trail: `hmac-sha256:<hex>`.

    Keyed so that a leaked audit trail cannot be searched with a dictionary of likely
    passwords. It uses the signing key unless `kid` names another (to check an old record).
    """
    use_kid = ring.signing_kid if kid is None else kid
    try:
        secret = ring.secret(use_kid)
    except UnknownKey:
        raise SealError(f"cannot fingerprint under unknown key id {use_kid!r}") from None
    key = derive_key(secret, FINGERPRINT_INFO)
    return FINGERPRINT_PREFIX + hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def seal_inputs(
    ring: KeyRing,
    *,
    job_id: str,
    manifest_password_names: Iterable[str],
    values: Mapping[str, InputValue],
) -> tuple[dict[str, InputValue], dict[str, str]]:
    """Split normalised inputs into clear ones and sealed passwords (under the signing kid).

    A password name absent from `values` (optional, or hidden by `visible_if`) is skipped.
    """
    password_names = set(manifest_password_names)
    kid = ring.signing_kid
    clear: dict[str, InputValue] = {}
    sealed: dict[str, str] = {}
    for name, value in values.items():
        if name not in password_names:
            clear[name] = list(value) if isinstance(value, list) else value
            continue
        if not isinstance(value, str):
            # Do not echo the value: it is a password.
            raise SealError(f"password input {name!r} must be a single string")
        sealed[name] = seal_secret(ring, kid, job_id=job_id, name=name, value=value)
    return clear, sealed


def open_inputs(
    ring: KeyRing,
    kid: str,
    *,
    job_id: str,
    inputs: Mapping[str, InputValue],
    sealed: Mapping[str, str],
) -> dict[str, InputValue]:
    """Merge clear inputs with opened sealed ones; `SealError` if any fails to open."""
    overlap = set(inputs) & set(sealed)
    if overlap:
        raise SealError(f"inputs and sealed both name {', '.join(sorted(overlap))}")
    merged: dict[str, InputValue] = {
        name: list(value) if isinstance(value, list) else value for name, value in inputs.items()
    }
    for name, token in sealed.items():
        merged[name] = open_secret(ring, kid, job_id=job_id, name=name, token=token)
    return merged
