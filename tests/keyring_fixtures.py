"""Key rings for tests: fixed, obviously-fake secrets."""

from __future__ import annotations

import base64

from core.keyring import KeyRing, parse_keyring


def ring_of(*kids: str) -> KeyRing:
    """A key ring with one 32-byte secret per kid, the last one signing."""
    lines = [f"{kid}:{base64.b64encode((kid.encode() * 32)[:32]).decode()}" for kid in kids]
    return parse_keyring("\n".join(lines) + "\n")
