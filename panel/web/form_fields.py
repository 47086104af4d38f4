"""The install form of an app: one view per manifest input, and the parser of its POST body.

The form is generated from the manifest. Each `FieldView` carries what its template macro
(`_fields.html`, one macro per input type) needs: ids, the value to show, the error next to
it and the `visible_if` rule for `static/js/form.js`. Validation itself is never done here:
the shared core `validate_inputs` (through `JobService.submit`) decides, so the browser, the
panel and the agent can never disagree. This module only turns an HTML form body into the
mapping that function expects, which takes care with two things HTML forms do:

- a boolean is a hidden `false` followed by a checkbox `true`, so the last value wins;
- any field may arrive more than once; only a multiselect may, every other one is refused.

Passwords are never echoed back: not as a default, not after an error, not on "run again".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from multidict import MultiMapping

from core.errors import FormError
from core.manifest.model import InputSpec, Manifest
from core.validation import FORM_KEY, normalise_field

# Panel-only form fields start with "_", which no input name can (^[a-z][a-z0-9_]{0,63}$).
TARGET_FIELD: Final = "_target"
HOSTNAME_PATTERN: Final = (
    r"[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*"
)
PORT_RANGE: Final = (1, 65535)

FormValue = str | list[str]


@dataclass(frozen=True, slots=True)
class FieldView:
    """One input as its template macro renders it."""

    spec: InputSpec
    value: str = ""
    values: tuple[str, ...] = ()
    error: str | None = None
    hidden: bool = False

    @property
    def id(self) -> str:
        """The control's id (a multiselect's first checkbox ends in `-0`)."""
        return f"field-{self.spec.name}"

    @property
    def help_id(self) -> str | None:
        """The id of the help text, if there is one."""
        return f"field-{self.spec.name}-help" if self.spec.help else None

    @property
    def error_id(self) -> str | None:
        """The id of the error message, if there is one."""
        return f"field-{self.spec.name}-error" if self.error else None

    @property
    def describedby(self) -> str | None:
        """The value of aria-describedby: the error first, then the help."""
        ids = [item for item in (self.error_id, self.help_id) if item]
        return " ".join(ids) or None

    @property
    def visible_if_json(self) -> str | None:
        """The `visible_if` rule as JSON for `form.js`, or None."""
        if not self.spec.visible_if:
            return None
        return json.dumps({name: list(values) for name, values in self.spec.visible_if.items()})

    @property
    def checked(self) -> bool:
        """Whether a boolean's checkbox is ticked."""
        return self.value == "true"

    @property
    def min(self) -> int | float | None:
        """The lowest number allowed (ports: 1 unless the manifest says otherwise)."""
        rules = self.spec.validation
        if rules.min is None and self.spec.type == "port":
            return PORT_RANGE[0]
        return rules.min

    @property
    def max(self) -> int | float | None:
        """The highest number allowed (ports: 65535 unless the manifest says otherwise)."""
        rules = self.spec.validation
        if rules.max is None and self.spec.type == "port":
            return PORT_RANGE[1]
        return rules.max

    @property
    def step(self) -> str:
        """The number input's step: any for numbers, 1 for integers and ports."""
        return "any" if self.spec.type == "number" else "1"

    @property
    def hostname_pattern(self) -> str:
        """The HTML pattern of a host name (the server's check is the real one)."""
        return HOSTNAME_PATTERN

    @property
    def error_sentence(self) -> str | None:
        """The error as a sentence shown next to the field ("Required.")."""
        return sentence(self.error) if self.error else None


def sentence(message: str) -> str:
    """A core message ("must be at least 3") as a sentence ("Must be at least 3.")."""
    text = message.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


@dataclass(frozen=True, slots=True)
class ErrorLink:
    """One entry of the error summary: the message and the control it points at."""

    label: str
    message: str
    href: str | None


@dataclass(slots=True)
class ParsedForm:
    """An install form body: input values for the core validator, the target, and problems."""

    inputs: dict[str, FormValue] = field(default_factory=dict)
    target: str = ""
    errors: dict[str, str] = field(default_factory=dict)


def parse_install_form(manifest: Manifest, body: MultiMapping[object]) -> ParsedForm:
    """Turn a form body into input values; extra fields the browser sent are ignored.

    A field the browser did not send (a hidden `visible_if` field, disabled) is left out,
    so the core validator applies its default; an empty text box is a deliberate "".
    """
    parsed = ParsedForm()
    targets = [value for value in body.getall(TARGET_FIELD, []) if isinstance(value, str)]
    parsed.target = targets[-1].strip() if targets else ""
    for spec in manifest.inputs:
        raw = body.getall(spec.name, [])
        if any(not isinstance(value, str) for value in raw):
            parsed.errors[spec.name] = "must be text, not a file"
            continue
        texts = [value for value in raw if isinstance(value, str)]
        if spec.type == "multiselect":
            parsed.inputs[spec.name] = texts
        elif not texts:
            continue
        elif spec.type == "boolean":
            # The hidden "false" comes first and the ticked checkbox's "true" after it.
            parsed.inputs[spec.name] = texts[-1]
        elif len(texts) > 1:
            parsed.errors[spec.name] = "was sent more than once"
        else:
            parsed.inputs[spec.name] = texts[0]
    return parsed


def _current_value(spec: InputSpec, values: Mapping[str, object]) -> FormValue | None:
    if spec.type == "password":
        return None
    if spec.name in values:
        value = values[spec.name]
        if isinstance(value, list | tuple):
            return [str(item) for item in value]
        return value if isinstance(value, str) else None
    if spec.default is None:
        return None
    return list(spec.default) if isinstance(spec.default, tuple) else spec.default


def _visibility(manifest: Manifest, current: Mapping[str, FormValue | None]) -> dict[str, bool]:
    """Which inputs show with these values: the core rule, on a best-effort normalisation."""
    normal: dict[str, str] = {}
    for spec in manifest.inputs:
        value = current.get(spec.name)
        if isinstance(value, str) and value:
            try:
                result = normalise_field(spec, value)
            except FormError:
                continue
            if isinstance(result, str):
                normal[spec.name] = result
    by_name = {spec.name: spec for spec in manifest.inputs}
    memo: dict[str, bool] = {}

    def visible(spec: InputSpec) -> bool:
        if spec.name not in memo:
            memo[spec.name] = False  # cycles are refused at load; this only stops recursion
            memo[spec.name] = all(
                name in by_name and visible(by_name[name]) and normal.get(name) in wanted
                for name, wanted in spec.visible_if.items()
            )
        return memo[spec.name]

    return {spec.name: visible(spec) for spec in manifest.inputs}


def field_views(
    manifest: Manifest,
    values: Mapping[str, object] | None = None,
    errors: Mapping[str, str] | None = None,
) -> list[FieldView]:
    """A view of every input: `values` as typed (or the defaults), passwords always empty."""
    current = {spec.name: _current_value(spec, values or {}) for spec in manifest.inputs}
    shown = _visibility(manifest, current)
    views: list[FieldView] = []
    for spec in manifest.inputs:
        value = current[spec.name]
        views.append(
            FieldView(
                spec=spec,
                value=value if isinstance(value, str) else "",
                values=tuple(value) if isinstance(value, list) else (),
                error=(errors or {}).get(spec.name),
                hidden=not shown[spec.name],
            )
        )
    return views


def error_links(views: list[FieldView], errors: Mapping[str, str]) -> list[ErrorLink]:
    """The error summary: one link per bad field, in form order, then the rest."""
    links: list[ErrorLink] = []
    known = set()
    for view in views:
        if view.error:
            known.add(view.spec.name)
            anchor = f"#{view.id}-0" if view.spec.type == "multiselect" else f"#{view.id}"
            links.append(ErrorLink(view.spec.label, sentence(view.error), anchor))
    if TARGET_FIELD in errors:
        known.add(TARGET_FIELD)
        links.append(ErrorLink("Target host", sentence(errors[TARGET_FIELD]), "#field-target"))
    for name, message in errors.items():
        if name in known:
            continue
        label = "The form" if name == FORM_KEY else name
        links.append(ErrorLink(label, sentence(message), None))
    return links
