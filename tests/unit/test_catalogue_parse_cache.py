"""Manifests are parsed once per exact bytes: a file changed on disk is parsed afresh."""

from __future__ import annotations

from core.runtime.catalogue import load_app
from tests.unit.test_catalogue import GOOD_MANIFEST, make_app


def test_a_manifest_changed_on_disk_is_loaded_with_its_new_content(tmp_path):
    folder = make_app(tmp_path, "web")
    first = load_app(folder)
    assert first.valid and first.manifest is not None
    assert first.manifest.version == "1.0"
    (folder / "manifest.yml").write_text(GOOD_MANIFEST.format(app_id="web").replace("1.0", "2.0"))
    second = load_app(folder)
    assert second.valid and second.manifest is not None
    assert second.manifest.version == "2.0"
    assert second.fingerprint != first.fingerprint


def test_a_manifest_broken_on_disk_after_a_good_load_is_invalid(tmp_path):
    folder = make_app(tmp_path, "web")
    assert load_app(folder).valid
    (folder / "manifest.yml").write_text("id: web\nname: [unclosed\n")
    broken = load_app(folder)
    assert not broken.valid and broken.problems
