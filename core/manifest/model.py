"""The app manifest's model: what a checked `manifest.yml` is (pure; docs/architecture.md §2).

`Manifest`, `InputSpec` and `Validation` are frozen; only `core.manifest.parse` builds them
from a file. The rules every part shares live here too: the app id and input name patterns,
the names an input may not take, and the app fingerprint.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from core.retry import RetryPolicy

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
# An input reaches the script (run as root) as the environment variable NAME.upper(), so a
# name may not shadow what the agent sets or what a shell, the dynamic loader, libc or a
# common interpreter or tool reads (docs/architecture.md §2): PERL5OPT, NODE_OPTIONS,
# GLIBC_TUNABLES, GCONV_PATH, OPENSSL_CONF, a proxy or an apt/debconf setting each hand
# whoever fills the form a way into root. Bash's own variables are here too (SHELLOPTS=xtrace
# would print every command, secrets included; CDPATH and GLOBIGNORE change what paths and
# globs mean; FUNCNEST and TMOUT end a script early).
RESERVED_NAMES: Final = frozenset(
    {
        # set by the agent, or read by every shell
        "PATH", "HOME", "LANG", "SHELL", "IFS", "ENV", "TERM", "TMPDIR", "PS4", "PWD",
        "OLDPWD", "CDPATH", "GLOBIGNORE", "SHELLOPTS", "EXECIGNORE", "FUNCNEST", "TMOUT",
        "PROMPT_COMMAND", "POSIXLY_CORRECT", "HISTFILE",
        # read by libc and the loader
        "HOSTALIASES", "LOCPATH", "GCONV_PATH", "TZ", "TZDIR", "NLSPATH", "GLIBC_TUNABLES",
        "MALLOC_CHECK_",
        # read by TLS, download and packaging tools
        "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "APT_CONFIG", "NO_PROXY",
    }
)  # fmt: skip
RESERVED_PREFIXES: Final = (
    "LC_", "LD_", "BASH", "PROV_", "PYTHON", "PERL", "RUBY", "NODE_", "NPM_CONFIG_",
    "JAVA_", "_JAVA", "JDK_", "OPENSSL_", "GIT_", "DPKG_", "DEBIAN_", "DEBCONF_", "GEM_",
    "BUNDLE_",
)  # fmt: skip
# HTTP_PROXY, HTTPS_PROXY, FTP_PROXY, ALL_PROXY and the rest (curl, wget, apt, pip, git...).
RESERVED_SUFFIXES: Final = ("_PROXY",)
MAX_MANIFEST_BYTES: Final = 256 * 1024
DEFAULT_SCRIPT: Final = "install.sh"
DEFAULT_TIMEOUT_S: Final = 600
MAX_TIMEOUT_S: Final = 86400
MAX_RETRIES: Final = 20
# No manifest needs more than a few levels of nesting. PyYAML's scanner re-checks every
# open `[`/`{` level for each token (a few thousand `[` took seconds), and its composer
# recurses once per level of any kind; both are cut off long before that costs anything.
MAX_NESTING_DEPTH: Final = 50


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


def reserved_name_reason(name: str) -> str | None:
    """Why an input may not be called `name` (it would shadow a variable the agent sets or a
    shell, the loader or a common tool reads), or None when the name is free."""
    upper = name.upper()
    if upper in RESERVED_NAMES:
        return "a variable the agent sets or a shell, the loader or a common tool reads"
    prefix = next((prefix for prefix in RESERVED_PREFIXES if upper.startswith(prefix)), None)
    if prefix is not None:
        return f"and names starting with {prefix} belong to the agent, a shell, loader or tool"
    suffix = next((suffix for suffix in RESERVED_SUFFIXES if upper.endswith(suffix)), None)
    if suffix is not None:
        return f"and names ending with {suffix} set a proxy for download and packaging tools"
    return None


def is_reserved_name(name: str) -> bool:
    """Whether an input called `name` would shadow a variable the agent, shell or loader uses."""
    return reserved_name_reason(name) is not None


def app_fingerprint(manifest_bytes: bytes, script_bytes: bytes) -> str:
    """`sha256:` + hex sha256 of the manifest's bytes followed by the install script's bytes."""
    digest = hashlib.sha256()
    digest.update(manifest_bytes)
    digest.update(script_bytes)
    return "sha256:" + digest.hexdigest()
