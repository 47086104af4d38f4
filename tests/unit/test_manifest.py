"""Strict parsing of manifest.yml (docs/architecture.md §2)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from core.errors import ManifestError
from core.manifest.model import (
    DEFAULT_SCRIPT,
    InputSpec,
    Manifest,
    app_fingerprint,
    is_reserved_name,
    is_valid_app_id,
)
from core.manifest.parse import parse_manifest
from core.retry import RetryPolicy

DESIGN_EXAMPLE = b"""
id: nginx
name: Nginx
version: 1.2.0
description: High-performance web server and reverse proxy.
category: web
icon: icon.svg
script: install.sh
uninstall: uninstall.sh
timeout: 600
retry: {max_retries: 3, base_delay: 10, factor: 2}
verify: "curl -fsS http://127.0.0.1:${HTTP_PORT}/ >/dev/null"
idempotent: true
inputs:
  - name: server_name
    type: string
    label: Server Name
    help: The domain nginx answers for.
    required: true
    default: example.com
    placeholder: example.com
    validation: {pattern: '^[a-z0-9\\-\\.]+$',
                 pattern_message: "lower-case letters, digits, - and .",
                 min_length: 1, max_length: 253}
  - name: enable_ssl
    type: boolean
    label: Enable SSL
    default: "true"
  - name: https_port
    type: port
    label: HTTPS Port
    default: 443
    visible_if: {enable_ssl: "true"}
"""


def manifest_bytes(**overrides: object) -> bytes:
    """A minimal valid manifest for folder 'demo', with top-level fields replaced or added."""
    data: dict[str, object] = {"id": "demo", "name": "Demo", "version": "1.0"}
    data.update(overrides)
    return yaml.safe_dump(data, sort_keys=False).encode()


def parse(**overrides: object) -> Manifest:
    return parse_manifest(manifest_bytes(**overrides), folder_name="demo")


def problems_of(data: bytes, folder: str = "demo") -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data, folder_name=folder)
    assert caught.value.app_id == folder
    return caught.value.problems


def problems(**overrides: object) -> str:
    return "\n".join(problems_of(manifest_bytes(**overrides)))


def one_input(**fields: object) -> list[dict[str, object]]:
    return [{"name": "field", "type": "string", **fields}]


def spec(manifest: Manifest, name: str = "field") -> InputSpec:
    found = manifest.input(name)
    assert found is not None
    return found


def test_the_design_example_parses_with_every_field():
    manifest = parse_manifest(DESIGN_EXAMPLE, folder_name="nginx")
    assert manifest.id == "nginx"
    assert manifest.version == "1.2.0"
    assert manifest.uninstall == "uninstall.sh"
    assert manifest.retry == RetryPolicy(max_retries=3, base_delay_s=10.0, factor=2.0)
    assert manifest.verify is not None
    assert "${HTTP_PORT}" in manifest.verify
    assert [i.name for i in manifest.inputs] == ["server_name", "enable_ssl", "https_port"]
    assert spec(manifest, "enable_ssl").default == "true"
    assert spec(manifest, "https_port").default == "443"
    assert dict(spec(manifest, "https_port").visible_if) == {"enable_ssl": ("true",)}
    rules = spec(manifest, "server_name").validation
    assert rules.compiled is not None
    assert rules.compiled.fullmatch("example.com")


def test_a_minimal_manifest_takes_the_documented_defaults():
    manifest = parse()
    assert manifest.script == DEFAULT_SCRIPT == "install.sh"
    assert manifest.timeout_s == 600
    assert manifest.retry == RetryPolicy()
    assert manifest.idempotent is True
    assert manifest.inputs == ()
    assert manifest.verify is None
    assert manifest.uninstall is None


def test_the_id_must_equal_the_folder_name():
    assert "must equal the folder name" in "\n".join(problems_of(manifest_bytes(), folder="other"))


@pytest.mark.parametrize("app_id", ["Demo", "-demo", "de mo", "../x", "a" * 64, ""])
def test_an_id_not_matching_the_pattern_is_refused(app_id):
    with pytest.raises(ManifestError):
        parse_manifest(manifest_bytes(id=app_id), folder_name=app_id or "x")


def test_valid_app_ids_match_the_pattern_and_hostile_ones_do_not():
    assert is_valid_app_id("hello-web")
    assert is_valid_app_id("a_1")
    for hostile in ["..", "a/b", "a\x00", "A", "", None, 5, "a" * 64, "a\n"]:
        assert not is_valid_app_id(hostile)


def test_duplicate_keys_are_refused():
    data = b"id: demo\nname: Demo\nname: Other\nversion: '1'\n"
    assert any("duplicate key" in p for p in problems_of(data))


def test_duplicate_keys_inside_an_input_are_refused():
    data = b"id: demo\nname: Demo\nversion: '1'\ninputs:\n  - {name: a, type: string, type: text}\n"
    assert any("duplicate key" in p for p in problems_of(data))


def test_anchors_and_aliases_are_refused():
    data = b"id: demo\nname: &n Demo\nversion: '1'\ndescription: *n\n"
    assert any("aliases" in p for p in problems_of(data))


def test_merge_keys_are_refused():
    data = b"id: demo\nname: Demo\nversion: '1'\nretry:\n  <<: {max_retries: 1}\n"
    assert any("merge keys" in p for p in problems_of(data))


def test_unknown_top_level_fields_are_refused():
    assert "colour: unknown field" in problems(colour="blue")


def test_unknown_fields_in_an_input_are_refused():
    assert "unknown field" in problems(inputs=one_input(colour="blue"))


def test_unknown_fields_in_validation_are_refused():
    assert "validation.regex: unknown field" in problems(
        inputs=one_input(validation={"regex": "a"})
    )


def test_unknown_fields_in_retry_are_refused():
    assert "retry.tries: unknown field" in problems(retry={"tries": 3})


def test_invalid_yaml_is_reported_not_raised():
    assert any("not valid YAML" in p for p in problems_of(b"id: [unclosed\n"))


def test_a_document_that_is_not_a_mapping_is_refused():
    assert any("must be a mapping" in p for p in problems_of(b"- a\n- b\n"))
    assert any("must be a mapping" in p for p in problems_of(b""))


def test_a_manifest_that_is_not_utf8_is_refused():
    assert any("UTF-8" in p for p in problems_of(b"id: d\xffmo\n"))


def test_every_problem_is_collected_not_just_the_first():
    found = problems(
        colour="x", timeout=0, script="../evil.sh", inputs=[{"name": "PATH", "type": "nope"}]
    )
    for expected in ["colour", "timeout", "script", "inputs[0]"]:
        assert expected in found


def test_an_unquoted_version_number_is_refused_with_a_hint():
    assert "put it in quotes" in problems(version=1.2)


def test_a_yaml_bool_is_not_a_whole_number():
    assert "timeout: must be a whole number" in problems(timeout=True)
    assert "max_retries: must be a whole number" in problems(retry={"max_retries": True})


def test_a_string_is_not_a_boolean():
    assert "idempotent: must be true or false" in problems(idempotent="yes")


@pytest.mark.parametrize("timeout", [0, -1, 86401])
def test_a_timeout_outside_1_to_86400_is_refused(timeout):
    assert "timeout" in problems(timeout=timeout)


def test_a_timeout_at_the_bounds_is_accepted():
    assert parse(timeout=1).timeout_s == 1
    assert parse(timeout=86400).timeout_s == 86400


@pytest.mark.parametrize(
    "retry",
    [
        {"max_retries": 21},
        {"max_retries": -1},
        {"base_delay": 0},
        {"base_delay": -1.5},
        {"base_delay": float("inf")},
        {"factor": 0.5},
        {"factor": float("nan")},
        {"factor": "2"},
    ],
)
def test_insane_retry_values_are_refused(retry):
    assert "retry." in problems(retry=retry)


def test_fractional_retry_delay_and_factor_are_accepted():
    assert parse(retry={"max_retries": 0, "base_delay": 0.5, "factor": 1.5}).retry == RetryPolicy(
        max_retries=0, base_delay_s=0.5, factor=1.5
    )


@pytest.mark.parametrize(
    "script",
    [
        "../install.sh",
        "sub/install.sh",
        "install.py",
        "/bin/install.sh",
        ".sh",
        "a\x00.sh",
        ".hidden.sh",
    ],
)
def test_a_script_that_is_not_a_bare_sh_file_name_is_refused(script):
    assert "script" in problems(script=script)


def test_the_uninstall_script_follows_the_same_rule():
    assert "uninstall" in problems(uninstall="../remove.sh")


def test_an_icon_with_a_path_is_refused():
    assert "icon" in problems(icon="../../etc/passwd")


@pytest.mark.parametrize("name", ["Field", "1field", "field-name", "f" * 65, "_x", "a b"])
def test_input_names_must_match_the_pattern(name):
    assert "must match" in problems(inputs=[{"name": name, "type": "string"}])


def test_an_empty_or_missing_input_name_is_refused():
    assert "name: must not be empty" in problems(inputs=[{"name": "", "type": "string"}])
    assert "name: is required" in problems(inputs=[{"type": "string"}])


@pytest.mark.parametrize(
    "name",
    [
        "path",
        "home",
        "lang",
        "shell",
        "ifs",
        "env",
        "term",
        "tmpdir",
        "ps4",
        "lc_all",
        "ld_preload",
        "bash_env",
        "bashopts",
        "prov_job_id",
        "pythonpath",
        "pythonstartup",
    ],
)
def test_reserved_input_names_are_refused(name):
    assert is_reserved_name(name)
    assert "reserved" in problems(inputs=[{"name": name, "type": "string"}])


# Every name and prefix the contract of docs/architecture.md §2 reserves, each as an input
# name would spell it (input names are lower case): a prefix or suffix by an example.
CONTRACT_RESERVED = [
    *(
        name.lower()
        for name in (
            "PATH", "HOME", "LANG", "SHELL", "IFS", "ENV", "TERM", "TMPDIR", "PS4", "PWD",
            "OLDPWD", "CDPATH", "GLOBIGNORE", "SHELLOPTS", "EXECIGNORE", "FUNCNEST", "TMOUT",
            "PROMPT_COMMAND", "HOSTALIASES", "LOCPATH", "GCONV_PATH", "TZ", "TZDIR", "NLSPATH",
            "GLIBC_TUNABLES", "MALLOC_CHECK_", "SSL_CERT_FILE", "SSL_CERT_DIR",
            "CURL_CA_BUNDLE", "APT_CONFIG", "NO_PROXY", "POSIXLY_CORRECT", "HISTFILE",
        )
    ),
    # *_PROXY
    "http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy",
    # the prefixes, each bare and with a tail
    "lc_", "lc_ctype", "ld_", "ld_audit", "bash", "bash_env", "prov_", "prov_target",
    "python", "pythonhome", "perl", "perl5opt", "perl5lib", "perllib", "ruby", "rubyopt",
    "rubylib", "node_", "node_options", "node_path", "npm_config_", "npm_config_prefix",
    "java_", "java_tool_options", "jdk_", "jdk_java_options", "openssl_", "openssl_conf",
    "openssl_modules", "git_", "git_ssh_command", "git_exec_path", "dpkg_", "dpkg_root",
    "debian_", "debian_frontend", "debconf_", "debconf_frontend", "debconf_db_override",
    "gem_", "gem_home", "bundle_", "bundle_gemfile",
]  # fmt: skip


@pytest.mark.parametrize("name", CONTRACT_RESERVED)
def test_every_name_the_contract_reserves_is_refused_naming_the_input_and_why(name):
    assert is_reserved_name(name)
    found = problems(inputs=[{"name": name, "type": "string"}])
    assert f"inputs[0] ({name}).name: {name!r} is reserved" in found
    assert f"would reach the script as {name.upper()}" in found


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("perl5opt", "names starting with PERL"),
        ("node_options", "names starting with NODE_"),
        ("https_proxy", "names ending with _PROXY"),
        ("glibc_tunables", "a variable the agent sets or a shell, the loader"),
        ("openssl_conf", "names starting with OPENSSL_"),
        ("debconf_frontend", "names starting with DEBCONF_"),
    ],
)
def test_the_refusal_says_which_rule_reserves_the_name(name, why):
    assert why in problems(inputs=[{"name": name, "type": "string"}])


def test_an_upper_case_only_prefix_is_kept_in_the_rule():
    # `_JAVA_OPTIONS` cannot be spelled as an input name (it must start with a letter), but
    # the rule itself stays complete for anything that calls it.
    assert is_reserved_name("_java_options")


def test_names_that_merely_contain_a_reserved_word_are_allowed():
    assert not is_reserved_name("home_page")
    assert not is_reserved_name("my_path")
    assert not is_reserved_name("proxy_port")  # a proxy suffix only counts at the end
    assert not is_reserved_name("node")  # only NODE_ is a prefix
    assert not is_reserved_name("timezone")
    parse(inputs=[{"name": "home_page", "type": "url"}])


def test_input_names_must_be_unique():
    assert "used twice" in problems(
        inputs=[{"name": "a", "type": "string"}, {"name": "a", "type": "text"}]
    )


def test_an_unknown_type_is_refused():
    assert "type: must be one of" in problems(inputs=one_input(type="colour"))


@pytest.mark.parametrize("kind", ["select", "multiselect"])
def test_select_types_require_allowed_values(kind):
    assert "allowed_values" in problems(inputs=one_input(type=kind))
    assert "allowed_values" in problems(inputs=one_input(type=kind, validation={}))


def test_allowed_values_may_be_a_list_or_a_map_of_labels():
    listed = spec(parse(inputs=one_input(type="select", validation={"allowed_values": ["a", "b"]})))
    assert listed.validation.allowed_values == (("a", "a"), ("b", "b"))
    mapped = spec(
        parse(
            inputs=one_input(type="select", validation={"allowed_values": {"a": "Ay", "b": "Bee"}})
        )
    )
    assert mapped.validation.allowed_values == (("a", "Ay"), ("b", "Bee"))


def test_multiselect_values_may_not_contain_commas():
    assert "comma" in problems(
        inputs=one_input(type="multiselect", validation={"allowed_values": ["a,b", "c"]})
    )


def test_duplicate_allowed_values_are_refused():
    assert "listed twice" in problems(
        inputs=one_input(type="select", validation={"allowed_values": ["a", "a"]})
    )


def test_allowed_values_on_a_string_are_refused():
    assert "only for select" in problems(inputs=one_input(validation={"allowed_values": ["a"]}))


@pytest.mark.parametrize("kind", ["string", "boolean", "select", "email"])
def test_min_and_max_are_only_for_numeric_types(kind):
    extra = {"allowed_values": ["a"]} if kind == "select" else {}
    assert "only for integer, number and port" in problems(
        inputs=one_input(type=kind, validation={"min": 1, **extra})
    )


def test_pattern_is_only_for_text_types():
    assert "only for string, text and password" in problems(
        inputs=one_input(type="integer", validation={"pattern": "[0-9]+"})
    )


@pytest.mark.parametrize("bounds", [{"min": 0}, {"max": 65536}, {"min": -5}])
def test_port_bounds_must_stay_within_1_to_65535(bounds):
    assert "between 1 and 65535" in problems(inputs=one_input(type="port", validation=bounds))


def test_min_greater_than_max_is_refused():
    assert "must not be more than max" in problems(
        inputs=one_input(type="integer", validation={"min": 5, "max": 1})
    )


def test_integer_bounds_must_be_whole_numbers_but_number_bounds_may_be_fractional():
    assert "whole number" in problems(inputs=one_input(type="integer", validation={"min": 1.5}))
    rules = spec(
        parse(inputs=one_input(type="number", validation={"min": 0.5, "max": 2}))
    ).validation
    assert (rules.min, rules.max) == (0.5, 2)


def test_an_invalid_pattern_is_refused_at_load():
    assert "not a valid regular expression" in problems(
        inputs=one_input(validation={"pattern": "(unclosed"})
    )


def test_a_catastrophic_pattern_is_refused_at_load():
    assert "nested quantifiers" in problems(inputs=one_input(validation={"pattern": "(a+)+$"}))


def test_a_pattern_message_without_a_pattern_is_refused():
    assert "needs a pattern" in problems(inputs=one_input(validation={"pattern_message": "x"}))


def test_min_length_above_max_length_is_refused():
    assert "min_length" in problems(inputs=one_input(validation={"min_length": 5, "max_length": 2}))


def test_a_default_that_breaks_the_fields_own_rules_is_a_manifest_problem():
    found = problems(inputs=one_input(default="UPPER", validation={"pattern": "[a-z]+"}))
    assert "default" in found
    assert "expected format" in found
    assert "default" in problems(inputs=one_input(type="port", default=70000))
    assert "default" in problems(inputs=one_input(type="boolean", default="maybe"))
    assert "default" in problems(
        inputs=one_input(type="select", default="c", validation={"allowed_values": ["a", "b"]})
    )


def test_a_yaml_bool_default_for_a_string_is_refused():
    assert "default: must be text" in problems(inputs=one_input(default=True))


def test_defaults_are_normalised():
    manifest = parse(
        inputs=[
            {"name": "flag", "type": "boolean", "default": True},
            {"name": "port", "type": "port", "default": 8080},
            {"name": "ratio", "type": "number", "default": 1.50},
            {"name": "host", "type": "hostname", "default": "Example.COM"},
            {
                "name": "tags",
                "type": "multiselect",
                "default": ["b", "a"],
                "validation": {"allowed_values": ["a", "b", "c"]},
            },
        ]
    )
    assert [i.default for i in manifest.inputs] == [
        "true",
        "8080",
        "1.5",
        "example.com",
        ("a", "b"),
    ]


def test_a_password_cannot_have_a_default():
    assert "cannot have a default" in problems(
        inputs=one_input(type="password", default="hunter2hunter2")
    )


def test_visible_if_values_are_normalised_like_the_referenced_field():
    manifest = parse(
        inputs=[
            {"name": "flag", "type": "boolean"},
            {"name": "port", "type": "port"},
            {"name": "a", "type": "string", "visible_if": {"flag": True}},
            {"name": "b", "type": "string", "visible_if": {"flag": "yes", "port": [80, "443"]}},
        ]
    )
    assert dict(spec(manifest, "a").visible_if) == {"flag": ("true",)}
    assert dict(spec(manifest, "b").visible_if) == {"flag": ("true",), "port": ("80", "443")}


def test_visible_if_must_refer_to_an_existing_other_input():
    assert "not an input" in problems(inputs=one_input(visible_if={"ghost": "x"}))
    assert "depend on itself" in problems(inputs=one_input(visible_if={"field": "x"}))


def test_visible_if_values_must_be_valid_for_the_referenced_field():
    assert "must be true or false" in problems(
        inputs=[
            {"name": "flag", "type": "boolean"},
            {"name": "a", "type": "string", "visible_if": {"flag": "maybe"}},
        ]
    )


def test_visible_if_cycles_are_refused():
    assert "circle" in problems(
        inputs=[
            {"name": "a", "type": "boolean", "visible_if": {"b": "true"}},
            {"name": "b", "type": "boolean", "visible_if": {"a": "true"}},
        ]
    )


def test_visible_if_on_a_password_is_refused():
    assert "cannot depend on a password" in problems(
        inputs=[
            {"name": "secret", "type": "password"},
            {"name": "a", "type": "string", "visible_if": {"secret": "x"}},
        ]
    )


def test_a_missing_label_is_derived_from_the_name():
    assert spec(parse(inputs=[{"name": "site_title", "type": "string"}]), "site_title").label == (
        "Site title"
    )


def test_a_label_with_a_newline_is_refused():
    assert "single line" in problems(inputs=one_input(label="a\nb"))


def test_the_fingerprint_is_sha256_of_manifest_then_script_bytes():
    expected = "sha256:" + hashlib.sha256(b"manifest" + b"script").hexdigest()
    assert app_fingerprint(b"manifest", b"script") == expected
    assert app_fingerprint(b"manifes", b"tscript") == expected  # plain concatenation
    assert app_fingerprint(b"manifest", b"script!") != expected


def test_the_example_app_manifest_parses():
    root = Path(__file__).resolve().parents[2]
    data = (root / "installers" / "hello-web" / "manifest.yml").read_bytes()
    manifest = parse_manifest(data, folder_name="hello-web")
    assert manifest.category == "web"
    assert spec(manifest, "port").default == "8081"
    assert dict(spec(manifest, "banner_text").visible_if) == {"enable_banner": ("true",)}


@pytest.mark.parametrize("name", ["shellopts", "cdpath", "globignore", "posixly_correct"])
def test_input_names_that_change_how_bash_behaves_are_refused(name: str) -> None:
    data = (
        f"id: app\nname: App\nversion: '1'\ninputs:\n  - name: {name}\n    type: string\n"
    ).encode()
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data, folder_name="app")
    assert name in str(caught.value)
