"""Sealed secrets: AES-GCM bound to job and field, per-kid derived keys, keyed fingerprints."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import SealError
from core.keyring import KeyRing
from core.sealing import (
    FINGERPRINT_PREFIX,
    NONCE_BYTES,
    TAG_BYTES,
    open_inputs,
    open_secret,
    seal_inputs,
    seal_secret,
    secret_fingerprint,
)

JOB = "01J9Z3Q6Y8V5K2M4N7P0R1S2T3"
OTHER_JOB = "01J9Z3Q6Y8V5K2M4N7P0R1S2T4"
RING = KeyRing({"k1": b"\x01" * 32, "k2": b"\x02" * 32})
PASSWORD = "correct horse battery staple"


def test_a_sealed_secret_opens_back_to_its_value():
    token = seal_secret(RING, "k1", job_id=JOB, name="admin_password", value=PASSWORD)
    assert open_secret(RING, "k1", job_id=JOB, name="admin_password", token=token) == PASSWORD


@given(st.text(max_size=300))
def test_any_text_survives_sealing(value):
    token = seal_secret(RING, "k2", job_id=JOB, name="pw", value=value)
    assert open_secret(RING, "k2", job_id=JOB, name="pw", token=token) == value


def test_a_token_is_standard_base64_of_nonce_ciphertext_and_tag():
    token = seal_secret(RING, "k1", job_id=JOB, name="pw", value=PASSWORD)
    assert "\n" not in token
    raw = base64.b64decode(token, validate=True)
    assert len(raw) == NONCE_BYTES + len(PASSWORD.encode()) + TAG_BYTES


def test_sealing_twice_gives_different_tokens():
    first = seal_secret(RING, "k1", job_id=JOB, name="pw", value=PASSWORD)
    second = seal_secret(RING, "k1", job_id=JOB, name="pw", value=PASSWORD)
    assert first != second


def test_the_token_never_contains_the_plaintext():
    value = "A" * 64
    token = seal_secret(RING, "k1", job_id=JOB, name="pw", value=value)
    raw = base64.b64decode(token)
    assert value not in token
    assert value.encode() not in raw
    assert b"AAAA" not in raw[NONCE_BYTES:]


def test_the_sealing_key_is_not_the_hmac_key():
    # Encrypt with the raw ring secret as the AES key: if sealing used it directly, this
    # token would open. It must not.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = b"\x00" * NONCE_BYTES
    aad_guess = b'["provision/seal/v1", "' + JOB.encode() + b'", "pw"]'
    forged = AESGCM(RING.secret("k1")).encrypt(nonce, b"x", aad_guess)
    token = base64.b64encode(nonce + forged).decode()
    with pytest.raises(SealError):
        open_secret(RING, "k1", job_id=JOB, name="pw", token=token)


@pytest.mark.parametrize(
    ("kid", "job_id", "name"),
    [
        ("k2", JOB, "pw"),
        ("k1", OTHER_JOB, "pw"),
        ("k1", JOB, "other_pw"),
    ],
    ids=["another kid", "another job", "another field"],
)
def test_a_token_moved_to_another_kid_job_or_field_does_not_open(kid, job_id, name):
    token = seal_secret(RING, "k1", job_id=JOB, name="pw", value=PASSWORD)
    with pytest.raises(SealError) as caught:
        open_secret(RING, kid, job_id=job_id, name=name, token=token)
    assert PASSWORD not in str(caught.value)


def test_an_unknown_kid_is_a_seal_error():
    with pytest.raises(SealError, match="k9"):
        seal_secret(RING, "k9", job_id=JOB, name="pw", value=PASSWORD)
    token = seal_secret(RING, "k1", job_id=JOB, name="pw", value=PASSWORD)
    with pytest.raises(SealError, match="k9"):
        open_secret(RING, "k9", job_id=JOB, name="pw", token=token)


def test_a_token_sealed_under_a_key_of_another_ring_does_not_open():
    other = KeyRing({"k1": b"\x09" * 32})
    token = seal_secret(other, "k1", job_id=JOB, name="pw", value=PASSWORD)
    with pytest.raises(SealError):
        open_secret(RING, "k1", job_id=JOB, name="pw", token=token)


TOKEN = seal_secret(RING, "k1", job_id=JOB, name="pw", value=PASSWORD)


@given(index=st.integers(0, len(base64.b64decode(TOKEN)) - 1), flip=st.integers(1, 255))
def test_changing_any_byte_of_a_token_is_refused(index, flip):
    raw = bytearray(base64.b64decode(TOKEN))
    raw[index] ^= flip
    with pytest.raises(SealError):
        open_secret(RING, "k1", job_id=JOB, name="pw", token=base64.b64encode(raw).decode())


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not base64!",
        "é",
        TOKEN + "\n",
        TOKEN.rstrip("=") if TOKEN.endswith("=") else TOKEN[:-1],
        base64.b64encode(b"\x00" * (NONCE_BYTES + TAG_BYTES - 1)).decode(),
        base64.urlsafe_b64encode(b"\xfb\xff" * 20).decode(),
    ],
    ids=["empty", "not base64", "non-ASCII", "newline", "bad padding", "too short", "urlsafe"],
)
def test_a_damaged_token_is_a_seal_error(token):
    with pytest.raises(SealError):
        open_secret(RING, "k1", job_id=JOB, name="pw", token=token)


def test_a_token_holding_bytes_that_are_not_utf8_is_a_seal_error():
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from core.sealing import SEAL_INFO, _associated_data
    from core.sealing import derive_key as _derive

    key = _derive(RING.secret("k1"), SEAL_INFO)
    nonce = b"\x07" * NONCE_BYTES
    body = AESGCM(key).encrypt(nonce, b"\xff\xfe", _associated_data(JOB, "pw"))
    with pytest.raises(SealError, match="UTF-8"):
        open_secret(
            RING, "k1", job_id=JOB, name="pw", token=base64.b64encode(nonce + body).decode()
        )


# --- fingerprints ------------------------------------------------------------------------


def test_a_fingerprint_is_stable_and_prefixed():
    first = secret_fingerprint(RING, PASSWORD)
    assert first == secret_fingerprint(RING, PASSWORD)
    assert first.startswith(FINGERPRINT_PREFIX)
    assert len(first) == len(FINGERPRINT_PREFIX) + 64


def test_fingerprints_of_different_values_differ():
    assert secret_fingerprint(RING, "a") != secret_fingerprint(RING, "b")


def test_a_fingerprint_is_keyed_by_the_signing_key():
    newer = KeyRing({**RING.keys, "k3": b"\x03" * 32})
    assert secret_fingerprint(RING, PASSWORD) != secret_fingerprint(newer, PASSWORD)
    assert secret_fingerprint(RING, PASSWORD) == secret_fingerprint(newer, PASSWORD, kid="k2")


def test_a_fingerprint_is_neither_a_plain_hash_nor_the_signing_hmac():
    digest = secret_fingerprint(RING, PASSWORD).removeprefix(FINGERPRINT_PREFIX)
    assert digest != hashlib.sha256(PASSWORD.encode()).hexdigest()
    assert digest != hmac.new(RING.secret("k2"), PASSWORD.encode(), hashlib.sha256).hexdigest()
    assert PASSWORD not in secret_fingerprint(RING, PASSWORD)


def test_a_fingerprint_under_an_unknown_kid_is_a_seal_error():
    with pytest.raises(SealError):
        secret_fingerprint(RING, PASSWORD, kid="k9")


# --- whole input sets --------------------------------------------------------------------


def test_seal_inputs_seals_only_passwords_and_open_inputs_merges_them_back():
    values = {"server_name": "example.com", "admin_password": PASSWORD, "mods": ["a", "b"]}
    clear, sealed = seal_inputs(
        RING,
        job_id=JOB,
        manifest_password_names=["admin_password", "absent_optional_password"],
        values=values,
    )
    assert clear == {"server_name": "example.com", "mods": ["a", "b"]}
    assert set(sealed) == {"admin_password"}
    assert PASSWORD not in repr(sealed)
    opened = open_inputs(RING, RING.signing_kid, job_id=JOB, inputs=clear, sealed=sealed)
    assert opened == values


def test_seal_inputs_seals_under_the_signing_kid():
    _, sealed = seal_inputs(
        RING, job_id=JOB, manifest_password_names={"pw"}, values={"pw": PASSWORD}
    )
    with pytest.raises(SealError):
        open_inputs(RING, "k1", job_id=JOB, inputs={}, sealed=sealed)
    assert open_inputs(RING, "k2", job_id=JOB, inputs={}, sealed=sealed) == {"pw": PASSWORD}


def test_a_password_given_as_a_list_is_refused_without_echoing_it():
    with pytest.raises(SealError) as caught:
        seal_inputs(RING, job_id=JOB, manifest_password_names=["pw"], values={"pw": [PASSWORD]})
    assert PASSWORD not in str(caught.value)


def test_open_inputs_refuses_a_name_both_clear_and_sealed():
    _, sealed = seal_inputs(RING, job_id=JOB, manifest_password_names=["pw"], values={"pw": "x"})
    with pytest.raises(SealError, match="pw"):
        open_inputs(RING, "k2", job_id=JOB, inputs={"pw": "clear"}, sealed=sealed)


def test_open_inputs_refuses_sealed_values_of_another_job():
    _, sealed = seal_inputs(RING, job_id=JOB, manifest_password_names=["pw"], values={"pw": "x"})
    with pytest.raises(SealError):
        open_inputs(RING, "k2", job_id=OTHER_JOB, inputs={}, sealed=sealed)


def test_a_fingerprint_is_an_hmac_under_its_own_hkdf_derived_key():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from core.sealing import HKDF_SALT

    def derived(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=info).derive(
            RING.secret("k2")
        )

    def keyed(key: bytes) -> str:
        return hmac.new(key, PASSWORD.encode(), hashlib.sha256).hexdigest()

    digest = secret_fingerprint(RING, PASSWORD).removeprefix(FINGERPRINT_PREFIX)
    assert digest == keyed(derived(b"provision/secret-fingerprint/v1"))
    assert digest != keyed(derived(b"provision/seal/v1"))
