"""The app manifest: its schema, a strict parser and the app fingerprint (pure; DESIGN §2).

`parse_manifest` turns the bytes of `installers/<app_id>/manifest.yml` into a frozen
`Manifest`, or raises `ManifestError` listing every problem found, so an author fixes them all
in one pass. Parsing is strict because a manifest decides what runs as root on a server:
duplicate keys, YAML anchors, unknown fields and wrong types are refused rather than guessed
at (a YAML `yes` is a bool, not the string "yes"; a bool is not an integer). Defaults and
`visible_if` values are normalised by the same code that validates submitted forms
(`core.validation`), so a manifest cannot ship a default its own form would refuse.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final

import yaml

from core.errors import FormError, ManifestError
from core.regex_safety import UnsafePatternError, check_pattern
from core.retry import RetryPolicy
from core.validation import MAX_VALUE_BYTES, is_single_line, normalise_field

APP_ID_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
INPUT_NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
INPUT_TYPES: Final = (
    "string",
    "text",
    "integer",
    "number",
    "boolean",
    "port",
    "password",
    "email",
    "hostname",
    "url",
    "select",
    "multiselect",
)
# Names the agent sets, or that the shell and the dynamic loader read (DESIGN §2), plus the
# bash variables that change how every script behaves (SHELLOPTS=xtrace would print every
# command, secrets included; CDPATH and GLOBIGNORE change what paths and globs mean).
RESERVED_NAMES: Final = frozenset(
    {
        "PATH", "HOME", "LANG", "SHELL", "IFS", "ENV", "TERM", "TMPDIR", "PS4",
        "SHELLOPTS", "CDPATH", "GLOBIGNORE", "POSIXLY_CORRECT", "HISTFILE", "PROMPT_COMMAND",
    }
)  # fmt: skip
RESERVED_PREFIXES: Final = ("LC_", "LD_", "BASH", "PROV_", "PYTHON")
MAX_MANIFEST_BYTES: Final = 256 * 1024
DEFAULT_SCRIPT: Final = "install.sh"
DEFAULT_TIMEOUT_S: Final = 600
MAX_TIMEOUT_S: Final = 86400
MAX_RETRIES: Final = 20
# No manifest needs more than a few levels of nesting. PyYAML's scanner re-checks every
# open `[`/`{` level for each token (a few thousand `[` took seconds), and its composer
# recurses once per level of any kind; both are cut off long before that costs anything.
MAX_NESTING_DEPTH: Final = 50

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


@dataclass(frozen=True, slots=True)
class Validation:
    """The `validation:` rules of one input; only those that fit its type are ever set."""

    pattern: str | None = None
    pattern_message: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    min: int | float | None = None
    max: int | float | None = None
    # (value, label) pairs in manifest order; empty unless the type is select or multiselect.
    allowed_values: tuple[tuple[str, str], ...] = ()
    # Compiled once when the manifest loads; derived from `pattern`, so not compared.
    compiled: re.Pattern[str] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One form field of a manifest; it reaches the script as the env var NAME.upper()."""

    name: str
    type: str
    label: str
    help: str = ""
    required: bool = False
    # Normalised like a submitted value: a str, a tuple for multiselect, None for no default.
    default: str | tuple[str, ...] | None = None
    placeholder: str = ""
    validation: Validation = field(default_factory=Validation)
    # field name -> the normalised values that make this field visible (any of them).
    visible_if: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def env_name(self) -> str:
        """The environment variable the script reads this input from."""
        return self.name.upper()


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed, fully checked `manifest.yml`."""

    id: str
    name: str
    version: str
    description: str = ""
    category: str = "other"
    icon: str | None = None
    script: str = DEFAULT_SCRIPT
    uninstall: str | None = None
    timeout_s: int = DEFAULT_TIMEOUT_S
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    verify: str | None = None
    idempotent: bool = True
    inputs: tuple[InputSpec, ...] = ()

    def input(self, name: str) -> InputSpec | None:
        """The input called `name`, if there is one."""
        return next((spec for spec in self.inputs if spec.name == name), None)


def is_valid_app_id(app_id: object) -> bool:
    """Whether `app_id` is a string matching the app id pattern (safe to use in a path)."""
    return isinstance(app_id, str) and APP_ID_PATTERN.fullmatch(app_id) is not None


def is_reserved_name(name: str) -> bool:
    """Whether an input called `name` would shadow a variable the agent, shell or loader uses."""
    upper = name.upper()
    return upper in RESERVED_NAMES or upper.startswith(RESERVED_PREFIXES)


def app_fingerprint(manifest_bytes: bytes, script_bytes: bytes) -> str:
    """`sha256:` + hex sha256 of the manifest's bytes followed by the install script's bytes."""
    digest = hashlib.sha256()
    digest.update(manifest_bytes)
    digest.update(script_bytes)
    return "sha256:" + digest.hexdigest()


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, merge keys, anchors, aliases and deep nesting."""

    def fetch_flow_collection_start(self, token_class: type[yaml.Token]) -> None:
        """Scan `[` or `{`, refusing flow collections nested deeper than MAX_NESTING_DEPTH."""
        if self.flow_level >= MAX_NESTING_DEPTH:
            raise self._too_deep()
        super().fetch_flow_collection_start(token_class)

    def add_indent(self, column: int) -> bool:
        """Open a block level (indentation), refusing more than MAX_NESTING_DEPTH of them."""
        if len(self.indents) >= MAX_NESTING_DEPTH:
            raise self._too_deep()
        return super().add_indent(column)

    def _too_deep(self) -> yaml.scanner.ScannerError:
        return yaml.scanner.ScannerError(
            None, None, f"nested deeper than {MAX_NESTING_DEPTH} levels", self.get_mark()
        )

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose a node, refusing aliases."""
        # Aliases let a tiny file expand into a huge tree, and no manifest needs them.
        if self.check_event(yaml.AliasEvent):
            event: yaml.events.Event = self.peek_event()  # type: ignore[no-untyped-call]
            mark = event.start_mark if isinstance(event.start_mark, yaml.error.Mark) else None
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases are not allowed", mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(
        self, node: yaml.MappingNode, deep: bool = False
    ) -> dict[Hashable, object]:
        """Construct a mapping, refusing duplicate keys and merge keys."""
        seen: set[object] = set()
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(
                    None, None, "merge keys (<<) are not allowed", key_node.start_mark
                )
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_short(key)}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _type_name(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class _Fields:
    """Typed reads of one YAML mapping, each adding a problem (with its path) when wrong."""

    def __init__(
        self, data: dict[object, object], where: str, allowed: frozenset[str], problems: list[str]
    ) -> None:
        self.data = data
        self.where = where
        self.problems = problems
        for key in data:
            if not isinstance(key, str):
                self.problem("", f"field names must be text, found {_short(key)}")
            elif key not in allowed:
                self.problem(key, "unknown field")

    def problem(self, key: str, message: str) -> None:
        path = f"{self.where}.{key}" if self.where and key else (self.where or key)
        self.problems.append(f"{path}: {message}" if path else message)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> object:
        return self.data.get(key)

    def text(
        self, key: str, *, required: bool = False, single_line: bool = True, max_chars: int = 0
    ) -> str | None:
        if key not in self.data:
            if required:
                self.problem(key, "is required")
            return None
        value = self.data[key]
        if not isinstance(value, str):
            hint = " (put it in quotes)" if isinstance(value, int | float | bool) else ""
            self.problem(key, f"must be text, found {_type_name(value)}{hint}")
            return None
        if "\x00" in value:
            self.problem(key, "must not contain NUL characters")
            return None
        if single_line and not is_single_line(value):
            self.problem(key, "must be a single line")
            return None
        if max_chars and len(value) > max_chars:
            self.problem(key, f"must be at most {max_chars} characters long")
            return None
        if required and not value.strip():
            self.problem(key, "must not be empty")
            return None
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false, found {_type_name(value)}")
            return default
        return value

    def integer(self, key: str, *, low: int, high: int) -> int | None:
        if key not in self.data:
            return None
        value = self.data[key]
        # A YAML bool is an int in Python; it is never a number here.
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem(key, f"must be a whole number, found {_type_name(value)}")
            return None
        if not low <= value <= high:
            self.problem(key, f"must be between {low} and {high}")
            return None
        return value

    def number(self, key: str) -> int | float | None:
        if key not in self.data:
            return None
        value = self.data[key]
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.problem(key, f"must be a number, found {_type_name(value)}")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(key, "must be a finite number")
            return None
        return value


def _bare_script_name(fields: _Fields, key: str, *, default: str | None) -> str | None:
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
        problems.append(f"{where}: must be a mapping, found {_type_name(value)}")
        return None
    return value


def _parse_retry(value: object, problems: list[str]) -> RetryPolicy:
    default = RetryPolicy()
    data = _mapping(value, "retry", problems)
    if data is None:
        return default
    fields = _Fields(data, "retry", _RETRY_FIELDS, problems)
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


def _parse_choices(value: object, kind: str, fields: _Fields) -> tuple[tuple[str, str], ...]:
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
            fields.problem("allowed_values", f"values must be text, found {_type_name(raw_value)}")
            continue
        if isinstance(raw_label, int) and not isinstance(raw_label, bool):
            label = str(raw_label)
        elif isinstance(raw_label, str):
            label = raw_label
        else:
            fields.problem("allowed_values", f"labels must be text, found {_type_name(raw_label)}")
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
                f"value {_short(choice)} must be non-empty printable text of at most "
                f"{_MAX_LABEL_CHARS} characters, with a printable label",
            )
            continue
        if kind == "multiselect" and "," in choice:
            fields.problem(
                "allowed_values", f"value {_short(choice)} must not contain a comma (multiselect)"
            )
            continue
        if choice in seen:
            fields.problem("allowed_values", f"value {_short(choice)} is listed twice")
            continue
        seen.add(choice)
        choices.append((choice, label))
    return tuple(choices)


def _parse_validation(value: object, kind: str, where: str, problems: list[str]) -> Validation:
    data = _mapping(value, f"{where}.validation", problems)
    if data is None:
        return Validation()
    fields = _Fields(data, f"{where}.validation", _VALIDATION_FIELDS, problems)
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


def _text_rules(fields: _Fields) -> Validation:
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


def _numeric_rules(fields: _Fields, kind: str) -> Validation:
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
    fields = _Fields(data, where, _INPUT_FIELDS, problems)
    ok = True

    name = fields.text("name", required=True)
    if name is not None:
        if INPUT_NAME_PATTERN.fullmatch(name) is None:
            fields.problem("name", "must match ^[a-z][a-z0-9_]{0,63}$")
            ok = False
        elif is_reserved_name(name):
            fields.problem(
                "name", f"{name.upper()} is reserved for the agent, the shell or the loader"
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


def _parse_default(fields: _Fields, spec: InputSpec) -> str | tuple[str, ...] | None:
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
            problems.append(f"{where}: {_short(key)} is not an input of this manifest")
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
                problems.append(f"{where}.{key}: {_short(option)} {message}")
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


def _load_yaml(data: bytes, problems: list[str]) -> object:
    if len(data) > MAX_MANIFEST_BYTES:
        problems.append(f"the manifest is larger than {MAX_MANIFEST_BYTES // 1024} KiB")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        problems.append("the manifest is not valid UTF-8")
        return None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        problems.append(f"not valid YAML: {error}")
    except ValueError as error:
        # A scalar the resolver typed but cannot build: an integer of more than 4300 digits
        # (Python's int limit) or an impossible timestamp such as 2024-13-45.
        problems.append(f"not valid YAML: a value cannot be read: {_short(str(error), 120)}")
    except RecursionError:
        problems.append("not valid YAML: nested too deeply")
    return None


def parse_manifest(data: bytes, *, folder_name: str) -> Manifest:
    """Parse and check a manifest; raise ManifestError(folder_name, every problem) if broken."""
    problems: list[str] = []
    document = _load_yaml(data, problems)
    if problems:
        raise ManifestError(folder_name, problems)
    top = _mapping(document, "manifest", problems)
    if top is None:
        raise ManifestError(folder_name, problems)
    fields = _Fields(top, "", _TOP_FIELDS, problems)

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
        problems.append(f"inputs: must be a list, found {_type_name(value)}")
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
