"""Valid manifests built at random, and form inputs aimed at them.

Every generated document must load; one that does not fails with a message naming this
strategy, so a mistake here is never mistaken for a product bug (nor hidden).
"""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import strategies as st

from core.errors import ManifestError
from core.manifest.model import INPUT_TYPES, Manifest
from core.manifest.parse import parse_manifest
from tests.property.strategies import ANY, HUGE_INTS, ODD_TEXT

SAFE_PATTERNS = ["[a-z]+", "[0-9a-f]{1,8}", "[A-Za-z0-9._-]*", "x|y|z", "[^,]{0,10}"]
CHOICES = st.lists(
    st.text(alphabet="abcxyz019-_ é", min_size=1, max_size=6).filter(str.isprintable),
    min_size=1,
    max_size=5,
    unique=True,
)
NAMES = st.lists(
    st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(
        lambda name: (
            not name.startswith(("lc_", "ld_", "bash", "prov_", "python"))
            and name.upper() not in {"PATH", "HOME", "LANG", "SHELL", "IFS", "ENV", "TERM", "PS4"}
        )
    ),
    min_size=1,
    max_size=6,
    unique=True,
)


@st.composite
def _input(draw: st.DrawFn, name: str, earlier: list[dict[str, Any]]) -> dict[str, Any]:
    kind = draw(st.sampled_from(INPUT_TYPES))
    spec: dict[str, Any] = {"name": name, "type": kind, "label": name.title()}
    spec["required"] = draw(st.booleans())
    rules: dict[str, Any] = {}
    if kind in ("string", "text", "password"):
        if draw(st.booleans()):
            rules["pattern"] = draw(st.sampled_from(SAFE_PATTERNS))
        low = draw(st.integers(0, 5))
        if draw(st.booleans()):
            rules["min_length"] = low
        if draw(st.booleans()):
            rules["max_length"] = max(1, low + draw(st.integers(0, 20)))
    elif kind in ("integer", "number"):
        low = draw(st.integers(-1000, 1000))
        if draw(st.booleans()):
            rules["min"] = low
        if draw(st.booleans()):
            rules["max"] = low + draw(st.integers(0, 10**6))
    elif kind in ("select", "multiselect"):
        choices = draw(CHOICES)
        if kind == "multiselect":
            choices = [choice.replace(",", "") or "v" for choice in choices]
            choices = list(dict.fromkeys(choices))
        rules["allowed_values"] = choices
        if draw(st.booleans()):
            spec["default"] = choices[0] if kind == "select" else [choices[0]]
    if kind == "boolean" and draw(st.booleans()):
        spec["default"] = draw(st.sampled_from(["true", "false", True, False]))
    if rules:
        spec["validation"] = rules
    # visible_if may only point back, so no cycle is ever made.
    targets = [item for item in earlier if item["type"] in ("boolean", "select")]
    if targets and draw(st.booleans()):
        target = draw(st.sampled_from(targets))
        if target["type"] == "boolean":
            wanted: Any = draw(st.sampled_from(["true", "false"]))
        else:
            wanted = draw(st.sampled_from(target["validation"]["allowed_values"]))
        spec["visible_if"] = {target["name"]: wanted}
    return spec


@st.composite
def valid_manifests(draw: st.DrawFn, *, with_password: bool = False) -> Manifest:
    """A manifest that loads, with a few inputs of every type (and a password if asked)."""
    inputs: list[dict[str, Any]] = []
    for name in draw(NAMES):
        inputs.append(draw(_input(name, inputs)))
    if with_password:
        inputs.append(
            {
                "name": "zz_secret",
                "type": "password",
                "label": "Secret",
                "required": True,
                "validation": {"pattern": "[A-Za-z0-9-]+", "max_length": 40},
            }
        )
    document = {"id": "app", "name": "App", "version": "1.0.0", "inputs": inputs}
    data = yaml.safe_dump(document, allow_unicode=True, sort_keys=False).encode()
    try:
        return parse_manifest(data, folder_name="app")
    except ManifestError as error:
        raise AssertionError(f"the valid-manifest strategy made a broken one: {error}") from None


def plausible_value(spec_type: str) -> st.SearchStrategy[Any]:
    """Values a form of this type might get: mostly right-looking, sometimes hostile."""
    right: dict[str, st.SearchStrategy[Any]] = {
        "boolean": st.sampled_from([True, False, "true", "no", "on", "0", "TRUE", 1]),
        "integer": st.integers(-(10**6), 10**6) | st.from_regex(r"-?[0-9]{1,8}", fullmatch=True),
        "port": st.integers(-5, 70000) | st.sampled_from(["443", "08080", "8_080", "٣"]),
        "number": st.floats() | st.decimals().map(str) | st.from_regex(r"-?[0-9]+\.[0-9]+e[0-9]+"),
        "email": st.emails() | st.sampled_from(["a@b", "a@@b.c", "A@EXAMPLE.COM"]),
        "hostname": st.sampled_from(["example.com", "EXAMPLE.com", "-x.com", "a..b", "x" * 70]),
        "url": st.sampled_from(["https://x.org/", "ftp://x", "http://u:p@x/", "javascript:1"]),
        "multiselect": st.lists(st.text(max_size=6), max_size=4) | st.text(max_size=10),
    }
    good = right.get(spec_type, st.text(max_size=30))
    return st.one_of(good, good, good, ANY, ODD_TEXT, HUGE_INTS)


@st.composite
def submissions(draw: st.DrawFn, manifest: Manifest) -> dict[Any, Any]:
    """A submitted form for `manifest`: its fields (some missing), maybe strangers too."""
    form: dict[Any, Any] = {}
    for spec in manifest.inputs:
        if draw(st.integers(0, 4)) == 0:
            continue  # left out: the default, or "required"
        if spec.type in ("select", "multiselect") and draw(st.booleans()):
            allowed = [value for value, _label in spec.validation.allowed_values]
            if spec.type == "select":
                form[spec.name] = draw(st.sampled_from(allowed))
            else:
                form[spec.name] = draw(st.lists(st.sampled_from(allowed), max_size=3))
        else:
            form[spec.name] = draw(plausible_value(spec.type))
    if draw(st.integers(0, 5)) == 0:
        form[draw(st.text(max_size=70) | st.integers() | st.none())] = draw(ANY)
    return form
