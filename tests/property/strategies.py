"""Hypothesis strategies: near-valid manifests, hostile YAML, form inputs, JSON, regexes.

"Near-valid" is the useful kind of random: mostly the right shape, so the parser gets deep
into its checks, with any field now and then replaced by a value of the wrong type, a huge
number, odd unicode, or nesting.
"""

from __future__ import annotations

import string
from typing import Any

import yaml
from hypothesis import strategies as st

from core.manifest.model import INPUT_TYPES

ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "yes",
        "no",
        "on",
        "null",
        "~",
        "0x1F",
        "0o17",
        "1e309",
        "-1e309",
        ".nan",
        "8_080",
        "٣٣",  # Arabic-Indic digits
        "\uff11\uff12",  # full-width digits
        "a\nb",
        "a\x00b",
        "\u2028",
        "\ud7ff\ue000",
        "é" * 3,
        "${PATH}",
        "$(id)",
        "x" * 600,
        "2024-13-45",
        "!!python/object",
    ]
)
HUGE_INTS = st.integers(min_value=-(10**60), max_value=10**60)
SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-100, max_value=70000),
    HUGE_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    ODD_TEXT,
)
ANY: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(), children, max_size=4)
    ),
    max_leaves=10,
)


def sometimes(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `good`, now and then any value at all."""
    return st.one_of(good, good, good, ANY)


# Pieces of regular expressions, valid and not, catastrophic and not.
REGEX_PIECES = st.sampled_from(
    [
        "a", "b", "[a-z]", "[^,]", "\\d", "\\w", "\\s", "\\b", ".", "é", "\\u00e9", "-",
        "(", ")", "(?:", "(?P<x>", "(?P=x)", "\\1", "(?=", "(?!", "(?<=a)", "(?i)", "(?s)",
        "*", "+", "?", "*?", "+?", "{2}", "{2,5}", "{0,}", "{99999999999}", "{3,1}",
        "|", "^", "$", "\\", "[", "]", "{", "}", "\\Z", "\\A", "[[:alpha:]]", "(?#c)",
    ]
)  # fmt: skip
EVIL_REGEXES = st.sampled_from(
    [
        "(a+)+$",
        "(a|a)*",
        "(a|aa)+",
        "(a*)*b",
        "(.*a){12}",
        "^(([a-z])+.)+[A-Z]([a-z])+$",
        "(\\w+\\s?)*$",
        "([a-z]+)*[0-9]",
        "(a?){25}a{25}",
        "(x+x+)+y",
        "(?:a|b|ab)*c",
    ]
)
REGEXES = st.one_of(
    st.lists(REGEX_PIECES, max_size=14).map("".join),
    EVIL_REGEXES,
    st.text(max_size=20),
)

INPUT_NAMES = st.one_of(
    st.sampled_from(["host", "port", "enable_ssl", "mode", "tags", "lc_all", "prov_x", "home"]),
    st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
    st.text(max_size=8),
)
CHOICE_VALUES = st.one_of(
    st.lists(st.text(max_size=6), max_size=5),
    st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=5),
)
VALIDATION = st.fixed_dictionaries(
    {},
    optional={
        "pattern": sometimes(REGEXES),
        "pattern_message": sometimes(st.text(max_size=20)),
        "min_length": sometimes(st.integers(min_value=-5, max_value=100)),
        "max_length": sometimes(st.integers(min_value=-5, max_value=100) | HUGE_INTS),
        "min": sometimes(st.integers(-1000, 1000) | st.floats() | HUGE_INTS),
        "max": sometimes(st.integers(-1000, 70000) | st.floats() | HUGE_INTS),
        "allowed_values": sometimes(CHOICE_VALUES),
        "flavour": ANY,  # unknown field
    },
)
VISIBLE_IF = st.dictionaries(INPUT_NAMES, SCALARS | st.lists(SCALARS, max_size=3), max_size=3)
INPUT = st.fixed_dictionaries(
    {
        "name": INPUT_NAMES,
        "type": sometimes(st.sampled_from(INPUT_TYPES)),
        "label": sometimes(st.text(max_size=20)),
    },
    optional={
        "help": sometimes(st.text(max_size=20)),
        "required": sometimes(st.booleans()),
        "default": SCALARS | st.lists(SCALARS, max_size=3),
        "placeholder": sometimes(st.text(max_size=10)),
        "validation": sometimes(VALIDATION),
        "visible_if": sometimes(VISIBLE_IF),
        "colour": ANY,  # unknown field
    },
)
RETRY = st.fixed_dictionaries(
    {},
    optional={
        "max_retries": sometimes(st.integers(-1, 30)),
        "base_delay": sometimes(st.integers(-1, 100) | st.floats() | HUGE_INTS),
        "factor": sometimes(st.integers(-1, 5) | st.floats()),
    },
)
SCRIPT_NAMES = st.sampled_from(
    ["install.sh", "setup.sh", "../x.sh", "/bin/sh", "a/b.sh", ".sh", "install", "é.sh", ""]
)
MANIFEST_DOCUMENT = st.fixed_dictionaries(
    {
        "id": sometimes(st.just("app")),
        "name": sometimes(st.text(max_size=20)),
        "version": sometimes(st.sampled_from(["1.0.0", "2", "x"])),
    },
    optional={
        "description": sometimes(st.text(max_size=40)),
        "category": sometimes(st.text(max_size=10)),
        "icon": sometimes(st.sampled_from(["icon.svg", "../icon.svg", "x/icon.svg"])),
        "script": sometimes(SCRIPT_NAMES),
        "uninstall": sometimes(SCRIPT_NAMES),
        "timeout": sometimes(st.integers(-5, 100000) | HUGE_INTS),
        "retry": sometimes(RETRY),
        "verify": sometimes(st.text(max_size=30)),
        "idempotent": sometimes(st.booleans()),
        "inputs": sometimes(st.lists(INPUT, max_size=6)),
        "homepage": ANY,  # unknown field
    },
)


def dump_yaml(document: object, *, flow: bool, unicode: bool) -> bytes:
    """The document as YAML text, the way an author might have written it."""
    return yaml.safe_dump(
        document, default_flow_style=flow, allow_unicode=unicode, sort_keys=False
    ).encode("utf-8")


MANIFEST_BYTES = st.builds(dump_yaml, MANIFEST_DOCUMENT, flow=st.booleans(), unicode=st.booleans())


def billion_laughs(levels: int) -> bytes:
    """The classic alias bomb: each level refers ten times to the one before."""
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, levels + 1):
        refs = ",".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines).encode()


# Sizes well past every limit (50 levels in a manifest, about 1000 in JSON, 4300 digits), yet
# small enough for hypothesis to print a failing input without warning about its size.
HOSTILE_YAML = st.one_of(
    st.integers(1, 12).map(billion_laughs),
    st.integers(1, 3000).map(lambda n: b"[" * n),
    st.integers(1, 1500).map(lambda n: b"{a: " * n),
    st.integers(1, 3000).map(lambda n: b"- " * n + b"x"),
    st.integers(1, 200).map(lambda n: b"".join(b"  " * i + b"k:\n" for i in range(n))),
    st.integers(4000, 6000).map(lambda n: b"timeout: " + b"9" * n),
    st.sampled_from(
        [
            b"id: app\nid: app\n",
            b"base: &b {id: app}\n<<: *b\n",
            b"!!python/object/apply:os.system ['true']\n",
            b"x: !!binary aGVsbG8=\n",
            b"x: !!set {a, b}\n",
            b"x: !!timestamp 2024-13-45\n",
            b"x: 2024-02-30\n",
            b"? [a, b]\n: c\n",
            b"? {a: b}\n: c\n",
            b"%YAML 1.1\n---\nid: app\n",
            b"---\nid: a\n---\nid: b\n",
            b"\xef\xbb\xbfid: app\n",
            b"\xff\xfe",
            b"id: app\n\x00\n",
            b"'unterminated",
            b"\t- tab",
        ]
    ),
)
LINE_PIECES = [
    "id: app", "name: X", "version: 1", "inputs:", "  - name: a", "    type: port",
    "    default: 08080", "    validation: {min: 1e999}", "&x", "*x", "- [", "]",
    "retry: {factor: .inf}", "timeout: 0b101", "idempotent: Yes", "? ", ": ", "|", ">-",
]  # fmt: skip
YAML_LINES = st.lists(
    st.one_of(
        st.sampled_from(LINE_PIECES),
        st.text(alphabet=string.printable + "é\u2028", max_size=20),
    ),
    max_size=12,
).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass"))
ANY_MANIFEST_BYTES = st.one_of(
    MANIFEST_BYTES,
    MANIFEST_BYTES,
    HOSTILE_YAML,
    YAML_LINES,
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
)
