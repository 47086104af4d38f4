"""The strict parser of `manifest.yml` (pure; docs/architecture.md §2).

`parse_manifest` turns the bytes of `installers/<app_id>/manifest.yml` into a frozen
`Manifest`, or raises `ManifestError` listing every problem found, so an author fixes them all
in one pass. Parsing is strict because a manifest decides what runs as root on a server:
duplicate keys, YAML anchors, unknown fields and wrong types are refused rather than guessed
at (a YAML `yes` is a bool, not the string "yes"; a bool is not an integer). Defaults and
`visible_if` values are normalised by the same code that validates submitted forms
(`core.validation`), so a manifest cannot ship a default its own form would refuse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from core.errors import FormError, ManifestError
from core.manifest.fields import Fields, short, type_name
from core.manifest.model import (
    APP_ID_PATTERN,
    DEFAULT_SCRIPT,
    DEFAULT_TIMEOUT_S,
    INPUT_NAME_PATTERN,
    INPUT_TYPES,
    MAX_RETRIES,
    MAX_TIMEOUT_S,
    InputSpec,
    Manifest,
    Validation,
    reserved_name_reason,
)
from core.manifest.regex_safety import UnsafePatternError, check_pattern
from core.manifest.yaml_loading import load_yaml
from core.retry import RetryPolicy
from core.validation import MAX_VALUE_BYTES, normalise_field

_TEXT_TYPES = frozenset({"string", "text", "password"})
_NUMERIC_TYPES = frozenset({"integer", "number", "port"})
_CHOICE_TYPES = frozenset({"select", "multiselect"})
_PORT_RANGE = (1, 65535)
_MAX_CHOICES = 1000
_MAX_LABEL_CHARS = 500

_TOP_FIELDS = frozenset(
    {
        "id",
        "name",
        "version",
        "description",
        "category",
        "icon",
        "script",
        "uninstall",
        "timeout",
        "retry",
        "verify",
        "idempotent",
        "inputs",
    }
)
_INPUT_FIELDS = frozenset(
    {
        "name",
        "type",
        "label",
        "help",
        "required",
        "default",
        "placeholder",
        "validation",
        "visible_if",
    }
)
_VALIDATION_FIELDS = frozenset(
    {"pattern", "pattern_message", "min_length", "max_length", "min", "max", "allowed_values"}
)
_RETRY_FIELDS = frozenset({"max_retries", "base_delay", "factor"})


def _bare_script_name(fields: Fields, key: str, *, default: str | None) -> str | None:
    if not fields.has(key):
        return default
    name = fields.text(key)
    if name is None:
        return default
    if not _is_bare_file_name(name) or not name.endswith(".sh") or name == ".sh":
        fields.problem(key, "must be a bare file name ending in .sh (no / and no ..)")
        return default
    return name


def _is_bare_file_name(name: str) -> bool:
    return (
        bool(name)
        and len(name) <= 255
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and ".." not in name
        and not name.startswith(".")
        and name.isprintable()
    )


def _mapping(value: object, where: str, problems: list[str]) -> dict[object, object] | None:
    if not isinstance(value, dict):
        problems.append(f"{where}: must be a mapping, found {type_name(value)}")
        return None
    return value


def _parse_retry(value: object, problems: list[str]) -> RetryPolicy:
    default = RetryPolicy()
    data = _mapping(value, "retry", problems)
    if data is None:
        return default
    fields = Fields(data, "retry", _RETRY_FIELDS, problems)
    max_retries = fields.integer("max_retries", low=0, high=MAX_RETRIES)
    base_delay = fields.number("base_delay")
    if base_delay is not None and not 0 < base_delay <= MAX_TIMEOUT_S:
        fields.problem("base_delay", f"must be more than 0 and at most {MAX_TIMEOUT_S} seconds")
        base_delay = None
    factor = fields.number("factor")
    if factor is not None and not 1 <= factor <= 100:
        fields.problem("factor", "must be between 1 and 100")
        factor = None
    return RetryPolicy(
        max_retries=default.max_retries if max_retries is None else max_retries,
        base_delay_s=default.base_delay_s if base_delay is None else float(base_delay),
        factor=default.factor if factor is None else float(factor),
    )


def _parse_choices(value: object, kind: str, fields: Fields) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[object, object]]
    if isinstance(value, list):
        pairs = [(item, item) for item in value]
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        fields.problem("allowed_values", "must be a list, or a mapping of value to label")
        return ()
    if not pairs:
        fields.problem("allowed_values", "must list at least one value")
        return ()
    if len(pairs) > _MAX_CHOICES:
        fields.problem("allowed_values", f"may list at most {_MAX_CHOICES} values")
        return ()
    choices: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw_value, raw_label in pairs:
        # Whole numbers are accepted as values (`[1, 2, 3]`) and become their decimal text.
        if isinstance(raw_value, int) and not isinstance(raw_value, bool):
            choice = str(raw_value)
        elif isinstance(raw_value, str):
            choice = raw_value
        else:
            fields.problem("allowed_values", f"values must be text, found {type_name(raw_value)}")
            continue
        if isinstance(raw_label, int) and not isinstance(raw_label, bool):
            label = str(raw_label)
        elif isinstance(raw_label, str):
            label = raw_label
        else:
            fields.problem("allowed_values", f"labels must be text, found {type_name(raw_label)}")
            continue
        if (
            not choice
            or len(choice) > _MAX_LABEL_CHARS
            or not choice.isprintable()
            or not label.isprintable()
            or len(label) > _MAX_LABEL_CHARS
        ):
            fields.problem(
                "allowed_values",
                f"value {short(choice)} must be non-empty printable text of at most "
                f"{_MAX_LABEL_CHARS} characters, with a printable label",
            )
            continue
        if kind == "multiselect" and "," in choice:
            fields.problem(
                "allowed_values", f"value {short(choice)} must not contain a comma (multiselect)"
            )
            continue
        if choice in seen:
            fields.problem("allowed_values", f"value {short(choice)} is listed twice")
            continue
        seen.add(choice)
        choices.append((choice, label))
    return tuple(choices)


def _parse_validation(value: object, kind: str, where: str, problems: list[str]) -> Validation:
    data = _mapping(value, f"{where}.validation", problems)
    if data is None:
        return Validation()
    fields = Fields(data, f"{where}.validation", _VALIDATION_FIELDS, problems)
    for key in ("pattern", "pattern_message", "min_length", "max_length"):
        if fields.has(key) and kind not in _TEXT_TYPES:
            fields.problem(key, "is only for string, text and password inputs")
    for key in ("min", "max"):
        if fields.has(key) and kind not in _NUMERIC_TYPES:
            fields.problem(key, "is only for integer, number and port inputs")
    if fields.has("allowed_values") and kind not in _CHOICE_TYPES:
        fields.problem("allowed_values", "is only for select and multiselect inputs")

    rules = Validation()
    if kind in _TEXT_TYPES:
        rules = _text_rules(fields)
    elif kind in _NUMERIC_TYPES:
        rules = _numeric_rules(fields, kind)
    elif kind in _CHOICE_TYPES:
        if not fields.has("allowed_values"):
            fields.problem("allowed_values", f"is required for {kind} inputs")
        else:
            rules = Validation(
                allowed_values=_parse_choices(fields.raw("allowed_values"), kind, fields)
            )
    return rules


def _text_rules(fields: Fields) -> Validation:
    pattern = fields.text("pattern", max_chars=0)
    compiled: re.Pattern[str] | None = None
    if pattern is not None:
        try:
            check_pattern(pattern)
            compiled = re.compile(pattern)
        except UnsafePatternError as unsafe:
            fields.problem("pattern", f"refused: {unsafe}")
            pattern = None
        except (re.error, OverflowError, RecursionError, ValueError) as error:
            fields.problem("pattern", f"is not a valid regular expression: {error}")
            pattern = None
    message = fields.text("pattern_message", max_chars=_MAX_LABEL_CHARS)
    if fields.has("pattern_message") and not fields.has("pattern"):
        fields.problem("pattern_message", "needs a pattern")
    min_length = fields.integer("min_length", low=0, high=MAX_VALUE_BYTES)
    max_length = fields.integer("max_length", low=1, high=MAX_VALUE_BYTES)
    if min_length is not None and max_length is not None and min_length > max_length:
        fields.problem("min_length", "must not be more than max_length")
    return Validation(
        pattern=pattern,
        pattern_message=message,
        min_length=min_length,
        max_length=max_length,
        compiled=compiled,
    )


def _numeric_rules(fields: Fields, kind: str) -> Validation:
    bounds: dict[str, int | float | None] = {}
    for key in ("min", "max"):
        if kind == "number":
            bounds[key] = fields.number(key)
        else:
            # Bounds of whole-number fields are whole numbers; ports must stay in 1..65535.
            low, high = _PORT_RANGE if kind == "port" else (-(10**18), 10**18)
            bounds[key] = fields.integer(key, low=low, high=high)
    low_bound, high_bound = bounds["min"], bounds["max"]
    if low_bound is not None and high_bound is not None and low_bound > high_bound:
        fields.problem("min", "must not be more than max")
    return Validation(min=low_bound, max=high_bound)


@dataclass(slots=True)
class _Draft:
    """An input while it is parsed: its spec, and the raw `visible_if` to resolve later."""

    spec: InputSpec
    raw_visible_if: object
    where: str


def _parse_input(value: object, index: int, problems: list[str]) -> _Draft | None:
    where = f"inputs[{index}]"
    data = _mapping(value, where, problems)
    if data is None:
        return None
    name_value = data.get("name")
    if isinstance(name_value, str) and INPUT_NAME_PATTERN.fullmatch(name_value):
        where = f"inputs[{index}] ({name_value})"
    fields = Fields(data, where, _INPUT_FIELDS, problems)
    ok = True

    name = fields.text("name", required=True)
    if name is not None:
        if INPUT_NAME_PATTERN.fullmatch(name) is None:
            fields.problem("name", "must match ^[a-z][a-z0-9_]{0,63}$")
            ok = False
        elif (reason := reserved_name_reason(name)) is not None:
            fields.problem(
                "name",
                f"{name!r} is reserved: it would reach the script as {name.upper()}, {reason}",
            )
            ok = False
    kind = fields.text("type", required=True)
    if kind is not None and kind not in INPUT_TYPES:
        fields.problem("type", "must be one of " + ", ".join(INPUT_TYPES))
        kind = None
    label = fields.text("label", max_chars=_MAX_LABEL_CHARS)
    help_text = fields.text("help", single_line=False, max_chars=4 * _MAX_LABEL_CHARS)
    placeholder = fields.text("placeholder", max_chars=_MAX_LABEL_CHARS)
    required = fields.boolean("required", default=False)
    if name is None or kind is None or not ok:
        return None

    rules = Validation()
    if fields.has("validation"):
        rules = _parse_validation(fields.raw("validation"), kind, where, problems)
    elif kind in _CHOICE_TYPES:
        fields.problem("validation", f"allowed_values is required for {kind} inputs")
    spec = InputSpec(
        name=name,
        type=kind,
        label=label if label is not None else name.replace("_", " ").capitalize(),
        help=help_text or "",
        required=required,
        placeholder=placeholder or "",
        validation=rules,
    )
    if fields.has("default"):
        spec = replace(spec, default=_parse_default(fields, spec))
    return _Draft(spec, fields.raw("visible_if"), where)


def _parse_default(fields: Fields, spec: InputSpec) -> str | tuple[str, ...] | None:
    raw = fields.raw("default")
    if spec.type == "password":
        # A default password would be the same on every server that took the default.
        fields.problem("default", "a password input cannot have a default")
        return None
    if raw is None or raw in ("", []):
        return None
    try:
        value = normalise_field(spec, raw)
    except FormError as error:
        fields.problem("default", error.errors.get(spec.name, "is not a valid value"))
        return None
    return tuple(value) if isinstance(value, list) else value


def _resolve_visible_if(
    draft: _Draft, specs: Mapping[str, InputSpec], problems: list[str]
) -> Mapping[str, tuple[str, ...]]:
    where = f"{draft.where}.visible_if"
    data = _mapping(draft.raw_visible_if, where, problems)
    if data is None:
        return MappingProxyType({})
    resolved: dict[str, tuple[str, ...]] = {}
    for key, wanted in data.items():
        if not isinstance(key, str) or key not in specs:
            problems.append(f"{where}: {short(key)} is not an input of this manifest")
            continue
        if key == draft.spec.name:
            problems.append(f"{where}: an input cannot depend on itself")
            continue
        other = specs[key]
        if other.type in ("multiselect", "password"):
            # A multiselect has no single value to compare, and a form must not reveal
            # anything about a password.
            problems.append(f"{where}.{key}: cannot depend on a {other.type} input")
            continue
        options = wanted if isinstance(wanted, list) else [wanted]
        if not options:
            problems.append(f"{where}.{key}: must list at least one value")
            continue
        values: list[str] = []
        for option in options:
            if option is None or option == "":
                problems.append(f"{where}.{key}: values must not be empty")
                continue
            try:
                normal = normalise_field(other, option)
            except FormError as error:
                message = error.errors.get(other.name, "is not a valid value")
                problems.append(f"{where}.{key}: {short(option)} {message}")
                continue
            if isinstance(normal, str) and normal not in values:
                values.append(normal)
        if values:
            resolved[key] = tuple(values)
    return MappingProxyType(resolved)


def _find_cycle(specs: Mapping[str, InputSpec]) -> list[str] | None:
    """A visible_if cycle (a -> b -> a) as a list of names, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for other in specs[name].visible_if:
            if state.get(other) == 1:
                return [*path[path.index(other) :], other]
            if other not in state:
                found = visit(other, [*path, other])
                if found:
                    return found
        state[name] = 2
        return None

    for name in specs:
        if name not in state:
            found = visit(name, [name])
            if found:
                return found
    return None


def parse_manifest(data: bytes, *, folder_name: str) -> Manifest:
    """Parse and check a manifest; raise ManifestError(folder_name, every problem) if broken."""
    problems: list[str] = []
    document = load_yaml(data, problems)
    if problems:
        raise ManifestError(folder_name, problems)
    top = _mapping(document, "manifest", problems)
    if top is None:
        raise ManifestError(folder_name, problems)
    fields = Fields(top, "", _TOP_FIELDS, problems)

    app_id = fields.text("id", required=True)
    if app_id is not None:
        if APP_ID_PATTERN.fullmatch(app_id) is None:
            fields.problem("id", "must match ^[a-z0-9][a-z0-9_-]{0,62}$")
        elif app_id != folder_name:
            fields.problem("id", f"must equal the folder name {folder_name!r}")
    name = fields.text("name", required=True, max_chars=_MAX_LABEL_CHARS)
    version = fields.text("version", required=True, max_chars=100)
    description = fields.text("description", single_line=False, max_chars=10 * _MAX_LABEL_CHARS)
    category = fields.text("category", max_chars=100)
    icon = fields.text("icon")
    if icon is not None and not _is_bare_file_name(icon):
        fields.problem("icon", "must be a bare file name in the app's folder")
    script = _bare_script_name(fields, "script", default=DEFAULT_SCRIPT)
    uninstall = _bare_script_name(fields, "uninstall", default=None)
    timeout_s = fields.integer("timeout", low=1, high=MAX_TIMEOUT_S)
    retry = _parse_retry(fields.raw("retry"), problems) if fields.has("retry") else RetryPolicy()
    verify = fields.text("verify", single_line=False, max_chars=4096)
    idempotent = fields.boolean("idempotent", default=True)
    inputs = _parse_inputs(fields.raw("inputs"), problems) if fields.has("inputs") else ()

    if problems or app_id is None or name is None or version is None:
        raise ManifestError(folder_name, problems or ["the manifest is incomplete"])
    return Manifest(
        id=app_id,
        name=name,
        version=version,
        description=description or "",
        category=category or "other",
        icon=icon,
        script=script or DEFAULT_SCRIPT,
        uninstall=uninstall,
        timeout_s=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s,
        retry=retry,
        verify=verify,
        idempotent=idempotent,
        inputs=inputs,
    )


def _parse_inputs(value: object, problems: list[str]) -> tuple[InputSpec, ...]:
    if not isinstance(value, list):
        problems.append(f"inputs: must be a list, found {type_name(value)}")
        return ()
    drafts: list[_Draft] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        draft = _parse_input(item, index, problems)
        if draft is None:
            continue
        if draft.spec.name in seen:
            problems.append(f"{draft.where}.name: {draft.spec.name!r} is used twice")
            continue
        seen.add(draft.spec.name)
        drafts.append(draft)

    specs = {draft.spec.name: draft.spec for draft in drafts}
    resolved: list[InputSpec] = []
    for draft in drafts:
        if draft.raw_visible_if is None:
            resolved.append(draft.spec)
        else:
            visible_if = _resolve_visible_if(draft, specs, problems)
            resolved.append(replace(draft.spec, visible_if=visible_if))
    cycle = _find_cycle({spec.name: spec for spec in resolved})
    if cycle:
        problems.append("inputs: visible_if goes round in a circle: " + " -> ".join(cycle))
    return tuple(resolved)
