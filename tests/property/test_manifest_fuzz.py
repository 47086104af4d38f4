"""Fuzzing the manifest loader: any bytes give a Manifest or a ManifestError, quickly.

The catalogue loads every folder under installers/, and a broken manifest must never break
it (docs/architecture.md §2): `parse_manifest` may raise ManifestError and nothing else, `load_app`
and
`Catalogue.load` raise nothing at all, and no input costs more than 100 ms of CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core.errors import FormError, ManifestError
from core.manifest.model import MAX_NESTING_DEPTH, Manifest
from core.manifest.parse import parse_manifest
from core.runtime.catalogue import Catalogue, load_app
from core.validation import validate_inputs
from tests.property.strategies import ANY_MANIFEST_BYTES, billion_laughs
from tests.property.timing import timed


def _parse(data: bytes) -> Manifest | ManifestError:
    try:
        return timed("parse_manifest", data, lambda: parse_manifest(data, folder_name="app"))
    except ManifestError as error:
        return error


@given(ANY_MANIFEST_BYTES)
@example(billion_laughs(12))
@example(b"[" * 5000)
@example(b"timeout: " + b"9" * 5000)
@example(b"x: 2024-13-45\n")
def test_any_bytes_give_a_manifest_or_a_manifest_error_quickly(data):
    outcome = _parse(data)
    if isinstance(outcome, ManifestError):
        assert outcome.problems, "a ManifestError must say what is wrong"
        assert all(isinstance(problem, str) and problem for problem in outcome.problems)
        return
    # A manifest that loads must be usable: its own defaults validate (or are refused
    # with a FormError naming the fields), and nothing else escapes.
    assert outcome.id == "app"
    refused: FormError | None = None
    try:
        timed("validate_inputs(defaults)", outcome, lambda: validate_inputs(outcome, {}))
    except FormError as error:
        refused = error
    assert refused is None or refused.errors


@given(ANY_MANIFEST_BYTES, st.sampled_from(["app", "App", "a" * 70, "ok-1", "é", "x y"]))
def test_loading_a_catalogue_folder_never_raises(data, folder_name):
    with tempfile.TemporaryDirectory() as tmp:
        installers = Path(tmp)
        folder = installers / folder_name
        folder.mkdir()
        (folder / "manifest.yml").write_bytes(data)
        (folder / "install.sh").write_text("#!/bin/sh\ntrue\n")
        entry = timed("load_app", data, lambda: load_app(folder))
        catalogue = Catalogue.load(installers)
    assert entry.app_id == folder_name
    assert entry.valid == (not entry.problems and entry.manifest is not None)
    assert [(app.app_id, app.problems) for app in catalogue.apps] == [(folder_name, entry.problems)]


# Regressions the fuzzing found; kept as plain tests so they read as sentences.


def test_an_integer_longer_than_pythons_digit_limit_is_a_manifest_error():
    with pytest.raises(ManifestError, match="cannot be read"):
        parse_manifest(b"id: app\ntimeout: " + b"9" * 5000 + b"\n", folder_name="app")


def test_an_impossible_date_is_a_manifest_error():
    with pytest.raises(ManifestError, match=r"month must be in 1\.\.12"):
        parse_manifest(b"id: app\nversion: 2024-13-45\n", folder_name="app")


@pytest.mark.parametrize("deep", [b"[" * 3000, b"{a: " * 3000, b"- " * 3000 + b"x"])
def test_deep_nesting_is_refused_before_the_parser_slows_down(deep):
    with pytest.raises(ManifestError, match=f"nested deeper than {MAX_NESTING_DEPTH} levels"):
        parse_manifest(deep, folder_name="app")


def test_a_few_levels_of_nesting_still_parse():
    shallow = b"id: app\nname: A\nversion: '1'\ncategory: " + b"[" * 10 + b"]" * 10
    with pytest.raises(ManifestError, match="category"):  # parsed: only its type is wrong
        parse_manifest(shallow, folder_name="app")
