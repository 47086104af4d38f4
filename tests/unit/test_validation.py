"""Validation and normalisation of submitted inputs (docs/architecture.md §2)."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import FormError
from core.manifest.model import Manifest
from core.manifest.parse import parse_manifest
from core.validation import MAX_REQUEST_BYTES, MAX_VALUE_BYTES, to_env, validate_inputs

SECRET = "correct-horse-battery-staple"

INPUTS = [
    {
        "name": "title",
        "type": "string",
        "validation": {
            "pattern": "[a-z0-9.-]+",
            "pattern_message": "lower-case letters, digits, - and .",
            "max_length": 40,
        },
    },
    {"name": "notes", "type": "text"},
    {"name": "count", "type": "integer", "validation": {"min": -5, "max": 100}},
    {"name": "ratio", "type": "number", "validation": {"min": 0, "max": 10}},
    {"name": "flag", "type": "boolean", "default": "false"},
    {"name": "port", "type": "port", "default": 8080},
    {
        "name": "secret",
        "type": "password",
        "validation": {"min_length": 12, "max_length": 64, "pattern": "[^ ]+"},
    },
    {"name": "email", "type": "email"},
    {"name": "host", "type": "hostname"},
    {"name": "site", "type": "url"},
    {
        "name": "theme",
        "type": "select",
        "default": "light",
        "validation": {"allowed_values": {"light": "Light", "dark": "Dark"}},
    },
    {"name": "tags", "type": "multiselect", "validation": {"allowed_values": ["a", "b", "c"]}},
    {"name": "banner", "type": "string", "required": True, "visible_if": {"flag": "true"}},
    {"name": "needs_name", "type": "string", "required": True},
]


def make_manifest(inputs: list[dict[str, object]]) -> Manifest:
    data = {"id": "demo", "name": "Demo", "version": "1", "inputs": inputs}
    return parse_manifest(yaml.safe_dump(data, sort_keys=False).encode(), folder_name="demo")


MANIFEST = make_manifest(INPUTS)
BASE = {"needs_name": "x"}


def validate(**fields: object) -> dict[str, str | list[str]]:
    return validate_inputs(MANIFEST, {**BASE, **fields})


def error_of(field: str, value: object) -> str:
    with pytest.raises(FormError) as caught:
        validate(**{field: value})
    assert field in caught.value.errors, caught.value.errors
    return caught.value.errors[field]


def test_defaults_are_applied_for_missing_fields():
    values = validate()
    assert values["flag"] == "false"
    assert values["port"] == "8080"
    assert values["theme"] == "light"


def test_optional_fields_left_empty_are_returned_empty():
    values = validate()
    assert values["title"] == ""
    assert values["tags"] == []


def test_unknown_fields_are_refused():
    with pytest.raises(FormError) as caught:
        validate(colour="blue")
    assert caught.value.errors["colour"] == "unknown field"


def test_an_odd_unknown_field_name_is_reported_without_echoing_it():
    with pytest.raises(FormError) as caught:
        validate(**{"x" * 10_000: 1, "a\x00b": 2})
    assert list(caught.value.errors) == ["_form"]


def test_every_bad_field_gets_a_message_at_once():
    with pytest.raises(FormError) as caught:
        validate_inputs(MANIFEST, {"count": "x", "port": 0, "email": "nope"})
    assert set(caught.value.errors) == {"count", "port", "email", "needs_name"}
    assert caught.value.errors["needs_name"] == "required"


def test_an_empty_required_field_is_refused():
    assert error_of("needs_name", "") == "required"
    assert error_of("needs_name", None) == "required"


# --- visible_if ---


def test_a_hidden_field_is_not_required_and_not_returned():
    values = validate(flag="false")
    assert "banner" not in values


def test_a_hidden_field_is_not_validated_even_with_a_bad_value():
    values = validate(flag="no", banner="bad\x00value")
    assert "banner" not in values


def test_a_visible_field_is_required_and_returned():
    with pytest.raises(FormError) as caught:
        validate(flag="true", banner="")
    assert caught.value.errors == {"banner": "required"}
    assert validate(flag="on", banner="hi")["banner"] == "hi"


def test_visible_if_compares_normalised_values():
    assert validate(flag=True, banner="hi")["banner"] == "hi"
    assert validate(flag="YES", banner="hi")["banner"] == "hi"


def test_visible_if_with_a_list_means_any_of():
    manifest = make_manifest(
        [
            {"name": "mode", "type": "select", "validation": {"allowed_values": ["a", "b", "c"]}},
            {"name": "extra", "type": "string", "visible_if": {"mode": ["a", "b"]}},
        ]
    )
    assert "extra" in validate_inputs(manifest, {"mode": "b", "extra": "x"})
    assert "extra" not in validate_inputs(manifest, {"mode": "c", "extra": "x"})


def test_a_field_depending_on_a_hidden_field_is_hidden_too():
    manifest = make_manifest(
        [
            {"name": "a", "type": "boolean", "default": "false"},
            {"name": "b", "type": "boolean", "default": "true", "visible_if": {"a": "true"}},
            {"name": "c", "type": "string", "required": True, "visible_if": {"b": "true"}},
        ]
    )
    assert validate_inputs(manifest, {}) == {"a": "false"}


# --- integers and ports ---


@pytest.mark.parametrize(
    "value", ["8_080", " 80", "80 ", "\u0663", "+1", "1e3", "1.0", "0x10", "", "--1", "1-"]
)
def test_integers_must_be_plain_ascii_digits(value):
    if value == "":
        return  # empty is "no value", covered elsewhere
    assert error_of("count", value) == "must be a whole number"


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, [1], {"a": 1}, b"1"])
def test_a_non_integer_type_is_not_an_integer(value):
    assert error_of("count", value) == "must be a whole number"


def test_integers_are_normalised():
    assert validate(count="007")["count"] == "7"
    assert validate(count="-0")["count"] == "0"
    assert validate(count=-5)["count"] == "-5"


def test_integer_bounds_are_enforced():
    assert error_of("count", 101) == "must be at most 100"
    assert error_of("count", "-6") == "must be at least -5"


def test_a_huge_integer_is_refused_without_crashing():
    assert error_of("count", "9" * 5000) == "must be a whole number"
    assert error_of("count", 10**5000) == "is too large"


@pytest.mark.parametrize("value", [65536, "65536", 0, "0", "-1"])
def test_ports_must_be_1_to_65535(value):
    assert error_of("port", value).startswith(("must be at", "must be a whole"))


def test_port_bounds_are_named_in_the_message():
    assert error_of("port", 65536) == "must be at most 65535"
    assert error_of("port", 0) == "must be at least 1"


def test_ports_at_the_bounds_are_accepted():
    assert validate(port=1)["port"] == "1"
    assert validate(port="65535")["port"] == "65535"


# --- numbers ---


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1e1", "10"),
        ("2.50", "2.5"),
        (0.1, "0.1"),
        (-0.0, "0"),
        ("0.000", "0"),
        (3, "3"),
        ("7", "7"),
        (9.99, "9.99"),
    ],
)
def test_numbers_are_normalised_to_plain_decimal(value, expected):
    assert validate(ratio=value)["ratio"] == expected


@pytest.mark.parametrize("value", ["NaN", "nan", "inf", "-Infinity", math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(value):
    assert "number" in error_of("ratio", value)


@pytest.mark.parametrize("value", ["1_0", " 1", "1.", ".5", "0x1", "\u0661", True, "1e", "+1"])
def test_numbers_must_be_strict_decimal(value):
    assert "number" in error_of("ratio", value)


def test_number_bounds_are_enforced():
    assert error_of("ratio", "10.0001") == "must be at most 10"
    assert error_of("ratio", -0.5) == "must be at least 0"


def test_an_absurd_exponent_is_refused_without_building_a_huge_string():
    assert error_of("ratio", "1e999999999") == "is too large or too small"


# --- booleans ---


@pytest.mark.parametrize("value", [True, "true", "YES", "on", "1", "True"])
def test_true_words_become_true(value):
    assert validate(flag=value, banner="x")["flag"] == "true"


@pytest.mark.parametrize("value", [False, "false", "No", "OFF", "0"])
def test_false_words_become_false(value):
    assert validate(flag=value)["flag"] == "false"


@pytest.mark.parametrize("value", ["maybe", 1, 0, "t", "yes ", ["true"]])
def test_other_booleans_are_refused(value):
    assert error_of("flag", value) == "must be true or false"


# --- strings ---


@pytest.mark.parametrize(
    "field", ["title", "notes", "secret", "email", "host", "site", "needs_name"]
)
def test_nul_is_refused_in_every_text_field(field):
    assert "NUL" in error_of(field, "abc\x00defghijklmnop")


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\u2028b", "a\u2029b", "a\x85b", "a\vb"])
def test_line_breaks_are_refused_outside_text(value):
    assert error_of("needs_name", value) == "must be a single line"


def test_newlines_are_allowed_in_text():
    assert validate(notes="line one\r\nline two")["notes"] == "line one\r\nline two"


def test_other_control_characters_are_refused_even_in_text():
    assert "control characters" in error_of("notes", "bell\x07")


def test_a_trailing_newline_does_not_slip_past_a_pattern():
    with pytest.raises(FormError):
        validate(title="abc\n")
    manifest = make_manifest([{"name": "t", "type": "text", "validation": {"pattern": "[a-z]+"}}])
    with pytest.raises(FormError):
        validate_inputs(manifest, {"t": "abc\n"})


def test_a_pattern_must_match_the_whole_value_and_its_message_is_shown():
    assert error_of("title", "abc DEF") == "must match: lower-case letters, digits, - and ."
    assert validate(title="abc.def")["title"] == "abc.def"


def test_length_limits_are_enforced():
    assert error_of("title", "a" * 41) == "must be at most 40 characters long"


def test_a_value_over_64_kib_is_refused():
    assert "64 KiB" in error_of("notes", "a" * (MAX_VALUE_BYTES + 1))
    # Counted in UTF-8 bytes, not characters.
    assert "64 KiB" in error_of("notes", "é" * (MAX_VALUE_BYTES // 2 + 1))
    assert validate(notes="a" * MAX_VALUE_BYTES)["notes"] == "a" * MAX_VALUE_BYTES


def test_a_huge_string_is_refused_quickly():
    assert "64 KiB" in error_of("needs_name", "x" * 50_000_000)


def test_a_lone_surrogate_is_refused():
    assert "not valid text" in error_of("needs_name", "\ud800")


def test_strings_are_not_stripped():
    assert validate(needs_name="  spaced  ")["needs_name"] == "  spaced  "


@pytest.mark.parametrize("value", [{"a": {"b": 1}}, [1, [2]], b"bytes", 12, 1.5, True])
def test_nested_and_non_string_values_are_refused_for_strings(value):
    assert error_of("needs_name", value) == "must be text"


def test_the_whole_request_has_a_size_limit():
    assert MAX_REQUEST_BYTES == 1024 * 1024
    many = [{"name": f"f{i}", "type": "text"} for i in range(20)]
    manifest = make_manifest(many)
    with pytest.raises(FormError) as caught:
        validate_inputs(manifest, {f"f{i}": "a" * 60_000 for i in range(20)})
    assert "_form" in caught.value.errors


# --- passwords ---


@pytest.mark.parametrize(
    "value", [SECRET[:5], SECRET + " x", SECRET + "\x00", SECRET + "\n", SECRET * 10]
)
def test_a_password_is_never_echoed_in_any_message(value):
    with pytest.raises(FormError) as caught:
        validate(secret=value)
    assert caught.value.errors["secret"]
    assert value not in str(caught.value)
    assert SECRET[:5] not in str(caught.value)
    assert all(SECRET[:5] not in message for message in caught.value.errors.values())


def test_a_good_password_is_returned_unchanged():
    assert validate(secret=SECRET)["secret"] == SECRET


# --- email, hostname, url ---


@pytest.mark.parametrize("value", ["a@example.com", "first.last+tag@sub.example.org"])
def test_good_emails_are_accepted(value):
    assert validate(email=value)["email"] == value


def test_the_domain_of_an_email_is_lower_cased():
    assert validate(email="Me@Example.COM")["email"] == "Me@example.com"


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "a@b",
        "a@@b.com",
        "a b@c.com",
        "a@b .com",
        ".a@b.com",
        "a..b@c.com",
        "a@-b.com",
        "a" * 65 + "@b.com",
        "a@" + "b" * 250 + ".com",
    ],
)
def test_bad_emails_are_refused(value):
    assert "email" in error_of("email", value)


def test_hostnames_are_lower_cased():
    assert validate(host="WWW.Example.com")["host"] == "www.example.com"


@pytest.mark.parametrize(
    "value",
    [
        "-a.com",
        "a-.com",
        "a..com",
        "a_b.com",
        "a.com.",
        "ä.com",
        "a" * 64 + ".com",
        ("a" * 60 + ".") * 5,
    ],
)
def test_bad_hostnames_are_refused(value):
    assert "host name" in error_of("host", value)


@pytest.mark.parametrize(
    "value", ["https://example.com/path?q=1", "http://127.0.0.1:8080/", "http://[::1]/"]
)
def test_good_urls_are_accepted(value):
    assert validate(site=value)["site"] == value


@pytest.mark.parametrize(
    "value",
    [
        "ftp://example.com",
        "javascript:alert(1)",
        "http://",
        "https://exa mple.com",
        "http://a\tb.com",
        "http://example.com:99999/",
        "http://user:pw@example.com/",
        "https://example.com/" + "a" * 2048,
        "//example.com",
        "http://ex_ample.com/",
    ],
)
def test_bad_urls_are_refused(value):
    error_of("site", value)


# --- select and multiselect ---


def test_a_select_value_must_be_allowed():
    assert error_of("theme", "blue") == "must be one of: light, dark"
    assert validate(theme="dark")["theme"] == "dark"


def test_multiselect_values_are_returned_in_manifest_order():
    assert validate(tags=["c", "a"])["tags"] == ["a", "c"]


def test_a_single_string_is_a_one_item_multiselect():
    assert validate(tags="b")["tags"] == ["b"]


def test_a_multiselect_string_with_a_comma_is_refused():
    assert "comma" in error_of("tags", "a,b")
    assert "comma" in error_of("tags", ["a,b"])


def test_multiselect_duplicates_and_unknown_values_are_refused():
    assert "twice" in error_of("tags", ["a", "a"])
    assert "each choice" in error_of("tags", ["a", "z"])
    assert "list of choices" in error_of("tags", [["a"]])
    assert "list of choices" in error_of("tags", {"a": 1})


# --- the form as a whole ---


@pytest.mark.parametrize("submitted", [None, [], "text", 5, b"x"])
def test_inputs_that_are_not_a_mapping_are_refused_as_a_form_error(submitted):
    with pytest.raises(FormError) as caught:
        validate_inputs(MANIFEST, submitted)  # type: ignore[arg-type]
    assert "_form" in caught.value.errors


def test_non_string_keys_are_refused():
    with pytest.raises(FormError):
        validate_inputs(MANIFEST, {1: "x", None: "y"})  # type: ignore[dict-item]


def test_to_env_upper_cases_names_and_joins_multiselect_with_commas():
    values = validate(tags=["a", "b"], flag="true", banner="hi")
    env = to_env(MANIFEST, values)
    assert env["TAGS"] == "a,b"
    assert env["FLAG"] == "true"
    assert env["BANNER"] == "hi"
    assert env["PORT"] == "8080"
    assert all(isinstance(v, str) for v in env.values())


def test_to_env_ignores_names_the_manifest_does_not_declare():
    assert "EVIL" not in to_env(MANIFEST, {"evil": "x", "needs_name": "y"})


# --- properties ---

JSON_LIKE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.sampled_from(
        ["", "true", "0", "8080", "a", "b", "a,b", "1e3", "x@y.com", "http://a.io/", "NaN"]
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=8,
)
FIELD_NAMES = st.sampled_from([spec["name"] for spec in INPUTS] + ["unknown", "", "PATH"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(FIELD_NAMES, JSON_LIKE, max_size=8))
def test_validate_inputs_raises_nothing_but_form_error_for_any_json_like_input(submitted):
    errors: dict[str, str] = {}
    values: dict[str, object] = {}
    try:
        values = dict(validate_inputs(MANIFEST, submitted))
    except FormError as error:
        errors = error.errors
    assert bool(errors) != bool(values) or (not errors and not values)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in errors.items())
    assert all(isinstance(v, str | list) for v in values.values())


VALID_VALUES = st.fixed_dictionaries(
    {"needs_name": st.text(min_size=1, max_size=20).filter(str.isprintable)},
    optional={
        "title": st.from_regex(r"[a-z0-9.-]{1,40}", fullmatch=True),
        "notes": st.text(max_size=50),
        "count": st.integers(-5, 100) | st.integers(-5, 100).map(str),
        "ratio": st.floats(0, 10) | st.decimals(0, 10, places=3).map(str),
        "flag": st.sampled_from([True, False, "yes", "off", "1", "TRUE"]),
        "port": st.integers(1, 65535),
        "secret": st.text(min_size=12, max_size=64).filter(lambda s: " " not in s),
        "email": st.sampled_from(["a@b.io", "X.Y@Example.ORG"]),
        "host": st.sampled_from(["Example.com", "a-b.c", "localhost"]),
        "site": st.sampled_from(["https://example.com/x", "http://10.0.0.1:81/"]),
        "theme": st.sampled_from(["light", "dark"]),
        "tags": st.lists(st.sampled_from(["a", "b", "c"]), unique=True)
        | st.sampled_from(["a", "c"]),
        "banner": st.text(min_size=1, max_size=10).filter(str.isprintable),
    },
)


@settings(max_examples=300, deadline=None)
@given(VALID_VALUES)
def test_returned_values_validate_again_to_themselves(submitted):
    try:
        first = validate_inputs(MANIFEST, submitted)
    except FormError:
        return  # some generated values are invalid (e.g. control characters); not the point
    assert validate_inputs(MANIFEST, first) == first


class HostileStr(str):
    """A str subclass whose methods all blow up: validation must not call them."""

    def encode(self, *args, **kwargs):
        raise RuntimeError("boom")

    def __len__(self):
        raise RuntimeError("boom")

    def __eq__(self, other):
        raise RuntimeError("boom")

    __hash__ = str.__hash__


class HostileMapping(dict):
    def items(self):
        raise RuntimeError("boom")


def test_hostile_string_subclasses_are_handled_as_plain_strings():
    assert validate(needs_name=HostileStr("fine"))["needs_name"] == "fine"


def test_a_mapping_that_cannot_be_read_gives_a_form_error():
    with pytest.raises(FormError) as caught:
        validate_inputs(MANIFEST, HostileMapping(a=1))
    assert "_form" in caught.value.errors
