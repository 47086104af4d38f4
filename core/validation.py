"""Validate and normalise submitted form inputs against a manifest (pure; docs/architecture.md §2).

The panel calls `validate_inputs` before it signs a job, and the agent calls it again against
its own copy of the manifest, so both sides run the same code. Submitted data is hostile: any
shape, any type, any size. `validate_inputs` returns normalised values or raises `FormError`
with a message for every bad field, and never raises anything else.

Normal forms (what the script sees, as strings):

- boolean: `"true"` / `"false"`;
- integer, port: decimal digits without leading zeros or `+` (`"-0"` becomes `"0"`);
- number: plain decimal notation, no exponent, no trailing zeros after the point, no `.` for
  whole numbers (`"1e3"` -> `"1000"`, `"2.50"` -> `"2.5"`, `0.1` -> `"0.1"`, `-0.0` -> `"0"`);
  a float is first turned into its shortest `repr`, so `0.1` stays `"0.1"`;
- hostname, and the domain of an email: lower-cased;
- multiselect: a list in the manifest's order of allowed values;
- everything else: exactly as submitted.

Messages are for a person and never repeat the submitted value, so a password can never leak
through an error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from core.errors import FormError

if TYPE_CHECKING:
    from core.manifest.model import InputSpec, Manifest

MAX_VALUE_BYTES: Final = 64 * 1024
MAX_REQUEST_BYTES: Final = 1024 * 1024
FORM_KEY: Final = "_form"  # errors about the request as a whole; never an input name

Value = str | list[str]

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_NUMBER_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_MAX_INTEGER_DIGITS = 30
# Beyond these magnitudes the plain decimal form would be absurdly long.
_MAX_NUMBER_EXPONENT = 40
_MAX_NUMBER_CHARS = 100
_NUL = "\x00"
# Every line break Python's str.splitlines() knows, plus vertical tab and form feed.
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
_CONTROL_CHARS = re.compile("[\x01-\x08\x0b-\x1f\x7f-\x9f]")
_HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_SUBMITTED_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _FieldError(Exception):
    """One field's value is refused; the argument is the message for a person."""


def _as_str(value: object) -> str | None:
    """The value as an exact `str` if it is a string, else None (no user code is run)."""
    if isinstance(value, str):
        # str.__str__ copies a subclass into a plain str without calling its overrides.
        return str.__str__(value)
    return None


def _as_int(value: object) -> int | None:
    """The value as an exact `int` if it is an integer other than a bool, else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__int__(value)
    return None


def _check_text(text: str, *, multiline: bool) -> None:
    """Size, encoding and control-character rules every submitted string obeys."""
    # A code point is at least one UTF-8 byte, so a long string is refused before encoding it.
    if len(text) > MAX_VALUE_BYTES:
        raise _FieldError("is too long (at most 64 KiB)")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise _FieldError("contains characters that are not valid text") from None
    if size > MAX_VALUE_BYTES:
        raise _FieldError("is too long (at most 64 KiB)")
    if _NUL in text:
        raise _FieldError("must not contain NUL characters")
    if not multiline and _LINE_BREAKS.search(text):
        raise _FieldError("must be a single line")
    for match in _CONTROL_CHARS.finditer(text):
        if not (multiline and match.group() in "\n\r"):
            raise _FieldError("must not contain control characters")


def _text_value(value: object, *, multiline: bool = False) -> str:
    text = _as_str(value)
    if text is None:
        raise _FieldError("must be text")
    _check_text(text, multiline=multiline)
    return text


def _apply_text_rules(spec: InputSpec, text: str) -> None:
    rules = spec.validation
    if rules.min_length is not None and len(text) < rules.min_length:
        raise _FieldError(f"must be at least {rules.min_length} characters long")
    if rules.max_length is not None and len(text) > rules.max_length:
        raise _FieldError(f"must be at most {rules.max_length} characters long")
    if rules.compiled is not None and rules.compiled.fullmatch(text) is None:
        # fullmatch, not match with `$`: a trailing newline must never slip through.
        if rules.pattern_message:
            raise _FieldError(f"must match: {rules.pattern_message}")
        raise _FieldError("is not in the expected format")


def _apply_bounds(spec: InputSpec, number: Decimal, *, low: int | float | None) -> None:
    rules = spec.validation
    minimum = rules.min if rules.min is not None else low
    if minimum is not None and number < Decimal(repr(minimum)):
        raise _FieldError(f"must be at least {_format_bound(minimum)}")
    maximum = rules.max if rules.max is not None else (65535 if spec.type == "port" else None)
    if maximum is not None and number > Decimal(repr(maximum)):
        raise _FieldError(f"must be at most {_format_bound(maximum)}")


def _format_bound(bound: int | float) -> str:
    return canonical_decimal(Decimal(repr(bound)))


def canonical_decimal(number: Decimal) -> str:
    """Plain decimal text of a finite Decimal: no exponent, no trailing zeros, no `-0`."""
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _integer_value(spec: InputSpec, value: object) -> str:
    number = _as_int(value)
    if number is None:
        text = _as_str(value)
        if text is None or len(text) > _MAX_INTEGER_DIGITS + 1:
            raise _FieldError("must be a whole number")
        if _INTEGER_TEXT.fullmatch(text) is None or (spec.type == "port" and "-" in text):
            # fullmatch with [0-9] refuses '8_080', ' 80', '+1', '1e3' and other scripts' digits
            # that int() would accept.
            raise _FieldError("must be a whole number")
        number = int(text)
    elif number.bit_length() > 100:
        raise _FieldError("is too large")
    _apply_bounds(spec, Decimal(number), low=1 if spec.type == "port" else None)
    return str(number)


def _number_value(spec: InputSpec, value: object) -> str:
    integer = _as_int(value)
    if integer is not None:
        if integer.bit_length() > 100:
            raise _FieldError("is too large")
        number = Decimal(integer)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _FieldError("must be a finite number")
        number = Decimal(repr(float(value)))
    else:
        text = _as_str(value)
        if text is None:
            raise _FieldError("must be a number")
        if len(text) > _MAX_NUMBER_CHARS or _NUMBER_TEXT.fullmatch(text) is None:
            raise _FieldError("must be a number, such as 42 or 2.5")
        try:
            number = Decimal(text)
        except (InvalidOperation, ValueError):  # the pattern should make this impossible
            raise _FieldError("must be a number, such as 42 or 2.5") from None
    if not number.is_finite():
        raise _FieldError("must be a finite number")
    if number and not -_MAX_NUMBER_EXPONENT <= number.adjusted() <= _MAX_NUMBER_EXPONENT:
        raise _FieldError("is too large or too small")
    _apply_bounds(spec, number, low=None)
    canonical = canonical_decimal(number)
    if len(canonical) > _MAX_NUMBER_CHARS:
        raise _FieldError("has too many digits")
    return canonical


def _boolean_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = _as_str(value)
    if text is not None and len(text) <= 5:
        word = text.lower()
        if word in _TRUE_WORDS:
            return "true"
        if word in _FALSE_WORDS:
            return "false"
    raise _FieldError("must be true or false")


def _hostname(text: str) -> str:
    """An RFC 1123 host name, lower-cased; raises _FieldError otherwise."""
    if not text.isascii() or len(text) > 253:
        raise _FieldError("must be a host name such as example.com")
    host = text.lower()
    if not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        raise _FieldError("must be a host name such as example.com")
    return host


def _email_value(value: object) -> str:
    text = _text_value(value)
    bad = "must be an email address such as name@example.com"
    if len(text) > 254 or text.count("@") != 1:
        raise _FieldError(bad)
    local, domain = text.split("@")
    if not local or len(local) > 64 or _EMAIL_LOCAL.fullmatch(local) is None:
        raise _FieldError(bad)
    if "." not in domain:
        raise _FieldError(bad)
    try:
        host = _hostname(domain)
    except _FieldError:
        raise _FieldError(bad) from None
    return f"{local}@{host}"


def _url_value(value: object) -> str:
    text = _text_value(value)
    bad = "must be an http:// or https:// address"
    # Printable ASCII only: no whitespace or control characters can hide in the address.
    if len(text) > 2048 or not text.isascii() or not text.isprintable() or " " in text:
        raise _FieldError(bad)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - reading it validates the port (ValueError if out of range)
    except ValueError:
        raise _FieldError(bad) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise _FieldError(bad)
    if parts.username is not None or parts.password is not None:
        raise _FieldError("must not contain a user name or password")
    host = parts.hostname
    if not (host.startswith("[") or ":" in host):
        try:
            _hostname(host)
        except _FieldError:
            raise _FieldError(bad) from None
    return text


def _select_value(spec: InputSpec, value: object) -> str:
    text = _as_str(value)
    allowed = [choice for choice, _label in spec.validation.allowed_values]
    if text is None or text not in allowed:
        raise _FieldError("must be one of: " + ", ".join(allowed))
    return text


def _multiselect_value(spec: InputSpec, value: object) -> list[str]:
    allowed = [choice for choice, _label in spec.validation.allowed_values]
    single = _as_str(value)
    if single is not None:
        # A one-item HTML submit arrives as a plain string; a comma means a confused client.
        if "," in single:
            raise _FieldError("choices must not contain commas")
        items: list[object] = [single] if single else []
    elif isinstance(value, list | tuple):
        if len(value) > len(allowed):
            raise _FieldError("has more choices than there are options")
        items = list(value)
    else:
        raise _FieldError("must be a list of choices")
    chosen: set[str] = set()
    for item in items:
        text = _as_str(item)
        if text is None:
            raise _FieldError("must be a list of choices")
        if "," in text:
            raise _FieldError("choices must not contain commas")
        if text not in allowed:
            raise _FieldError("each choice must be one of: " + ", ".join(allowed))
        if text in chosen:
            raise _FieldError("must not list a choice twice")
        chosen.add(text)
    return [choice for choice in allowed if choice in chosen]


def _normalise(spec: InputSpec, value: object) -> Value:
    """The normal form of one non-empty value, or _FieldError with a message."""
    kind = spec.type
    if kind in ("string", "text", "password"):
        text = _text_value(value, multiline=kind == "text")
        _apply_text_rules(spec, text)
        return text
    if kind in ("integer", "port"):
        return _integer_value(spec, value)
    if kind == "number":
        return _number_value(spec, value)
    if kind == "boolean":
        return _boolean_value(value)
    if kind == "email":
        return _email_value(value)
    if kind == "hostname":
        return _hostname(_text_value(value))
    if kind == "url":
        return _url_value(value)
    if kind == "select":
        return _select_value(spec, value)
    if kind == "multiselect":
        return _multiselect_value(spec, value)
    raise _FieldError("has an unknown type")


def _is_empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return str.__len__(value) == 0
    if isinstance(value, list | tuple):
        return len(value) == 0
    return False


def _empty_value(spec: InputSpec) -> Value:
    return [] if spec.type == "multiselect" else ""


def normalise_field(spec: InputSpec, value: object) -> Value:
    """Normalise one non-empty value for `spec`; raise FormError({name: message}) if bad."""
    try:
        return _normalise(spec, value)
    except _FieldError as problem:
        raise FormError({spec.name: str(problem)}) from None
    except Exception:  # hostile input must never escape as anything but FormError
        raise FormError({spec.name: "is not a valid value"}) from None


def _value_size(value: Value) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    return sum(len(item.encode("utf-8")) + 1 for item in value)


def _visible(
    spec: InputSpec,
    by_name: Mapping[str, InputSpec],
    values: Mapping[str, Value],
    memo: dict[str, bool],
) -> bool:
    """Whether `spec` is shown: every `visible_if` field is visible and has a listed value."""
    if spec.name in memo:
        return memo[spec.name]
    memo[spec.name] = False  # a cycle (refused at load) can then never recurse forever
    shown = True
    for other_name, wanted in spec.visible_if.items():
        other = by_name.get(other_name)
        if other is None or not _visible(other, by_name, values, memo):
            shown = False
            break
        current = values.get(other_name)
        if not isinstance(current, str) or current not in wanted:
            shown = False
            break
    memo[spec.name] = shown
    return shown


def _submitted_items(submitted: object) -> list[tuple[object, object]]:
    if not isinstance(submitted, Mapping):
        raise FormError({FORM_KEY: "inputs must be an object of field names and values"})
    try:
        items = list(submitted.items())
    except Exception:
        raise FormError({FORM_KEY: "inputs must be an object of field names and values"}) from None
    return items


def validate_inputs(manifest: Manifest, submitted: Mapping[str, object]) -> dict[str, Value]:
    """Normalised values of every visible input, or FormError naming every bad field."""
    try:
        return _validate(manifest, submitted)
    except FormError:
        raise
    except Exception:  # a last guard: hostile input gets a FormError, never a crash
        raise FormError({FORM_KEY: "the inputs could not be read"}) from None


def _validate(manifest: Manifest, submitted: object) -> dict[str, Value]:
    items = _submitted_items(submitted)
    by_name = {spec.name: spec for spec in manifest.inputs}
    errors: dict[str, str] = {}
    raw: dict[str, object] = {}
    for key, value in items:
        name = _as_str(key)
        if name is not None and name in by_name:
            raw[name] = value
        elif name is not None and _SUBMITTED_NAME.fullmatch(name):
            errors[name] = "unknown field"
        else:
            # Never echo a huge or odd key back as an error key: say it once, in general.
            errors[FORM_KEY] = "contains a field with an invalid name"

    values: dict[str, Value] = {}
    problems: dict[str, str] = {}
    for spec in manifest.inputs:
        value = raw.get(spec.name)
        # A missing field (or JSON null) takes the default; an empty string is a deliberate "".
        if value is None and spec.default is not None:
            value = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        if _is_empty(value):
            continue
        try:
            values[spec.name] = normalise_field(spec, value)
        except FormError as error:
            problems[spec.name] = error.errors.get(spec.name, "is not a valid value")

    result: dict[str, Value] = {}
    memo: dict[str, bool] = {}
    for spec in manifest.inputs:
        if not _visible(spec, by_name, values, memo):
            continue  # hidden: neither required nor validated, and not passed on
        if spec.name in problems:
            errors[spec.name] = problems[spec.name]
        elif spec.name in values:
            result[spec.name] = values[spec.name]
        elif spec.required:
            errors[spec.name] = "required"
        else:
            result[spec.name] = _empty_value(spec)

    if sum(_value_size(value) for value in result.values()) > MAX_REQUEST_BYTES:
        errors[FORM_KEY] = "the inputs are too large altogether (at most 1 MiB)"
    if errors:
        raise FormError(errors)
    return result


def to_env(manifest: Manifest, values: Mapping[str, Value]) -> dict[str, str]:
    """Environment variables for the script: NAME.upper() -> string, lists joined with commas."""
    env: dict[str, str] = {}
    for spec in manifest.inputs:
        if spec.name not in values:
            continue
        value = values[spec.name]
        env[spec.name.upper()] = value if isinstance(value, str) else ",".join(value)
    return env


def is_single_line(text: str) -> bool:
    """Whether `text` has no line break of any kind (used for manifest labels and values)."""
    return _LINE_BREAKS.search(text) is None
