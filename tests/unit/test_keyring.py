"""The key ring: file format, refusals that never leak a secret, kid numbering, key files."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from core.errors import KeyRingError, UnknownKey
from core.keyring import (
    KeyRing,
    append_new_key,
    keyfile_mode_problem,
    load_keyring,
    new_key_line,
    next_kid,
    parse_keyring,
)

SECRET_A = bytes(range(32))
SECRET_B = bytes(range(100, 140))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_ring_keeps_file_order_and_the_last_key_signs():
    ring = parse_keyring(f"old:{b64(SECRET_A)}\nnew:{b64(SECRET_B)}\n")
    assert list(ring.keys) == ["old", "new"]
    assert ring.signing_kid == "new"
    assert ring.secret("old") == SECRET_A
    assert ring.secret("new") == SECRET_B


def test_blank_lines_comments_and_surrounding_spaces_are_allowed():
    text = f"# keys\n\n  k1:{b64(SECRET_A)}  \n# retired soon\nk2:{b64(SECRET_B)}"
    assert list(parse_keyring(text).keys) == ["k1", "k2"]


def test_membership_is_by_kid():
    ring = parse_keyring(f"k1:{b64(SECRET_A)}")
    assert "k1" in ring
    assert "k2" not in ring
    assert 1 not in ring


def test_asking_for_an_absent_kid_raises_unknown_key():
    ring = parse_keyring(f"k1:{b64(SECRET_A)}")
    with pytest.raises(UnknownKey) as caught:
        ring.secret("k9")
    assert caught.value.kid == "k9"


def test_the_ring_cannot_be_changed_after_it_is_built():
    source = {"k1": SECRET_A}
    ring = KeyRing(source)
    source["k2"] = SECRET_B
    assert list(ring.keys) == ["k1"]
    with pytest.raises(TypeError):
        ring.keys["k3"] = SECRET_B  # type: ignore[index]
    with pytest.raises(AttributeError):
        ring._keys = {}  # type: ignore[misc]


def test_repr_names_kids_but_never_a_secret():
    ring = parse_keyring(f"k1:{b64(SECRET_A)}\nk2:{b64(SECRET_B)}")
    shown = repr(ring)
    assert "k1" in shown
    assert "k2" in shown
    assert b64(SECRET_A) not in shown
    assert repr(SECRET_A) not in shown
    assert SECRET_B.hex() not in shown


@pytest.mark.parametrize(
    ("text", "expected_line"),
    [
        ("k1:" + b64(SECRET_A) + "\nnot a key line", 2),
        ("\n\nbad kid!:" + b64(SECRET_A), 3),
        ("k1:" + b64(SECRET_A) + "\nk1:" + b64(SECRET_B), 2),
        ("k1:" + b64(b"x" * 31), 1),
        ("k1:" + b64(SECRET_A)[:-1] + "!", 1),
        ("k1:" + b64(SECRET_A)[:-2], 1),
        ("k1:", 1),
        ("x" * 65 + ":" + b64(SECRET_A), 1),
    ],
    ids=[
        "no colon",
        "bad kid",
        "duplicate kid",
        "too short",
        "not base64",
        "bad padding",
        "empty secret",
        "kid too long",
    ],
)
def test_a_bad_line_is_refused_with_its_line_number(text, expected_line):
    with pytest.raises(KeyRingError, match=rf"line {expected_line}\b"):
        parse_keyring(text)


def test_urlsafe_base64_is_not_standard_base64_and_is_refused():
    secret = b"\xfb\xff" * 16  # encodes with '+' and '/' in standard base64
    urlsafe = base64.urlsafe_b64encode(secret).decode()
    assert "-" in urlsafe or "_" in urlsafe
    with pytest.raises(KeyRingError):
        parse_keyring("k1:" + urlsafe)


@pytest.mark.parametrize(
    "text",
    [
        "k1:" + b64(b"short secret: not 32 bytes"),
        "k1:" + b64(SECRET_A)[:-4] + "%%%%",
        "k1:" + b64(SECRET_A) + "\nk1:" + b64(SECRET_A),
        "this-whole-line-is-a-pasted-secret-" + b64(SECRET_B),
    ],
)
def test_a_refusal_never_quotes_the_secret_text(text):
    with pytest.raises(KeyRingError) as caught:
        parse_keyring(text)
    message = str(caught.value)
    secret_text = text.rsplit(":", 1)[-1].rsplit("\n", 1)[-1]
    assert secret_text not in message
    assert b64(SECRET_B) not in message
    assert caught.value.__cause__ is None


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_a_ring_without_keys_is_refused(text):
    with pytest.raises(KeyRingError, match="no key"):
        parse_keyring(text)


def test_an_empty_mapping_is_not_a_ring():
    with pytest.raises(KeyRingError):
        KeyRing({})


def test_next_kid_continues_past_the_highest_generated_number():
    assert next_kid(None) == "k1"
    ring = KeyRing({"k2": SECRET_A, "manual": SECRET_A, "k10": SECRET_A, "k3": SECRET_A})
    assert next_kid(ring) == "k11"
    assert next_kid(KeyRing({"manual": SECRET_A})) == "k1"


def test_new_key_line_parses_back_to_a_32_byte_secret():
    line = new_key_line(None)
    ring = parse_keyring(line)
    assert ring.signing_kid == "k1"
    assert len(ring.secret("k1")) == 32
    assert line.endswith("\n")
    assert line.count("\n") == 1


def test_new_key_line_uses_a_given_secret_and_a_fresh_one_otherwise():
    assert new_key_line(None, secret=SECRET_A) == f"k1:{b64(SECRET_A)}\n"
    assert new_key_line(None) != new_key_line(None)


def test_load_keyring_reads_a_file(tmp_path: Path):
    path = tmp_path / "hmac.keys"
    path.write_text(f"k1:{b64(SECRET_A)}\n")
    assert load_keyring(path).secret("k1") == SECRET_A


def test_load_keyring_names_the_file_when_it_is_missing_or_broken(tmp_path: Path):
    missing = tmp_path / "absent.keys"
    with pytest.raises(KeyRingError, match=r"absent\.keys"):
        load_keyring(missing)
    broken = tmp_path / "broken.keys"
    broken.write_text("k1\n")
    with pytest.raises(KeyRingError, match=r"broken\.keys: line 1"):
        load_keyring(broken)


def test_append_new_key_creates_the_file_with_mode_0600(tmp_path: Path):
    path = tmp_path / "hmac.keys"
    assert append_new_key(path) == "k1"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keyfile_mode_problem(path) is None
    assert load_keyring(path).signing_kid == "k1"


def test_append_new_key_keeps_old_keys_and_the_new_one_signs(tmp_path: Path):
    path = tmp_path / "hmac.keys"
    path.write_text(f"# mine\nk4:{b64(SECRET_A)}")  # no final newline on purpose
    os.chmod(path, 0o600)
    assert append_new_key(path) == "k5"
    assert append_new_key(path) == "k6"
    ring = load_keyring(path)
    assert list(ring.keys) == ["k4", "k5", "k6"]
    assert ring.secret("k4") == SECRET_A
    assert ring.signing_kid == "k6"


def test_append_new_key_refuses_to_extend_a_broken_file(tmp_path: Path):
    path = tmp_path / "hmac.keys"
    path.write_text("garbage\n")
    with pytest.raises(KeyRingError, match="line 1"):
        append_new_key(path)
    assert path.read_text() == "garbage\n"


def test_a_missing_folder_is_a_key_ring_error(tmp_path: Path):
    with pytest.raises(KeyRingError, match="cannot open"):
        append_new_key(tmp_path / "no" / "such" / "hmac.keys")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700])
def test_a_key_file_open_beyond_its_owner_is_reported(tmp_path: Path, mode):
    path = tmp_path / "hmac.keys"
    path.write_text(f"k1:{b64(SECRET_A)}\n")
    os.chmod(path, mode)
    problem = keyfile_mode_problem(path)
    assert problem is not None
    assert f"{mode:04o}" in problem


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_an_owner_only_key_file_is_fine(tmp_path: Path, mode):
    path = tmp_path / "hmac.keys"
    path.write_text(f"k1:{b64(SECRET_A)}\n")
    os.chmod(path, mode)
    assert keyfile_mode_problem(path) is None
