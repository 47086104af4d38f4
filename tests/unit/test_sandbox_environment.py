"""The script's environment, built from scratch (docs/architecture.md §6, layer 5)."""

from __future__ import annotations

import pytest

from agent.checks import SANDBOX_LANG, SANDBOX_PATH, sandbox_environment
from core.errors import ManifestError
from core.manifest.parse import parse_manifest

MANIFEST = b"""
id: demo
name: Demo
version: "1.0"
inputs:
  - {name: server_name, type: string}
  - {name: modules, type: multiselect, validation: {allowed_values: [a, b]}}
"""


def test_the_environment_holds_exactly_the_documented_variables_and_the_target(monkeypatch):
    monkeypatch.setenv("PROV_HMAC_KEYS_FILE", "agent-only")  # the agent's own: never passed on
    manifest = parse_manifest(MANIFEST, folder_name="demo")
    env = sandbox_environment(
        manifest,
        {"server_name": "example.com", "modules": ["a", "b"]},
        job_id="01JOB",
        attempt=2,
        home="/root",
        target="web-1",
    )
    assert env == {
        "PATH": SANDBOX_PATH,
        "LANG": SANDBOX_LANG,
        "HOME": "/root",
        "SERVER_NAME": "example.com",
        "MODULES": "a,b",
        "PROV_JOB_ID": "01JOB",
        "PROV_APP_ID": "demo",
        "PROV_ATTEMPT": "2",
        "PROV_TARGET": "web-1",
    }


def test_no_input_can_take_the_name_prov_target():
    document = MANIFEST + b"  - {name: prov_target, type: string}\n"
    with pytest.raises(ManifestError) as caught:
        parse_manifest(document, folder_name="demo")
    assert any("prov_target" in problem for problem in caught.value.problems)
