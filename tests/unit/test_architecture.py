"""The rooms of the tree and what each may import (docs/architecture.md draws them).

Every rule is checked by walking the folders, so a new module is bound by its room's rules
the moment it exists; nothing here is a hand-kept list of files. The size budget lives here
too: no module over `MAX_MODULE_LINES` lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "statemachine", "agent", "panel")
# I/O a pure module must never import: it would open a socket, start a process or loop.
IO_LIBRARIES = {"redis", "aiohttp", "subprocess", "socket", "asyncio", "click", "structlog"}
MAX_MODULE_LINES = 600

# Which top-level folder may import which (nothing imports upward; panel and agent never
# import each other).
MAY_IMPORT = {
    "core": {"core"},
    "statemachine": {"core", "statemachine"},
    "agent": {"core", "statemachine", "agent"},
    "panel": {"core", "statemachine", "panel"},
}

# Rooms whose modules may not import the named rooms (prefixes of dotted module names).
FORBIDDEN_ROOMS = {
    # The pure core knows nothing of its plumbing or commands.
    "core.pure": ("core.runtime", "core.cli"),
    "core.manifest": ("core.runtime", "core.cli"),
    "core.runtime": ("core.cli",),
    # The machine and its store know nothing of the audit product or the integrations.
    "statemachine.core": ("statemachine.audit", "statemachine.integrations"),
    "statemachine.integrations": ("statemachine.audit",),
    # The HTTP client and its commands talk to the panel over HTTP only.
    "panel.client": (
        "panel.app",
        "panel.appkeys",
        "panel.web",
        "panel.jobs",
        "panel.auth",
        "panel.cli",
        "statemachine.store",
        "statemachine.audit",
        "statemachine.integrations",
    ),
    # Jobs and access control are used by the web room, never the other way round.
    "panel.jobs": ("panel.web", "panel.cli", "panel.client"),
    "panel.auth": ("panel.web", "panel.cli", "panel.client", "panel.jobs"),
}


def modules() -> Iterator[tuple[str, Path]]:
    """Every module of the four packages: (dotted name, path)."""
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def room_of(dotted: str, path: Path) -> str:
    """The room a module belongs to, in the names of FORBIDDEN_ROOMS."""
    parts = dotted.split(".")
    if parts[0] == "core":
        if len(parts) > 1 and parts[1] in {"runtime", "cli", "manifest"}:
            return f"core.{parts[1]}"
        if path.name == "__main__.py":
            return "core.cli"
        return "core.pure"
    if parts[0] == "statemachine":
        if len(parts) > 1 and parts[1] in {"audit", "integrations"}:
            return f"statemachine.{parts[1]}"
        return "statemachine.core"
    if parts[0] == "panel" and len(parts) > 1:
        return f"panel.{parts[1]}"
    return parts[0]


def imported_modules(source: str, package: str = "") -> set[str]:
    """Every module a source imports, by dotted name (relative imports resolved)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", ""))
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def roots(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def inside(name: str, room: str) -> bool:
    return name == room or name.startswith(room + ".")


ALL = list(modules())


@pytest.mark.parametrize(("dotted", "path"), ALL, ids=[dotted for dotted, _ in ALL])
def test_each_module_imports_only_what_its_room_may(dotted, path):
    package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
    imported = imported_modules(path.read_text(encoding="utf-8"), package)
    top = dotted.split(".")[0]
    ours = {name for name in imported if name.split(".")[0] in PACKAGES}
    upward = sorted(name for name in ours if name.split(".")[0] not in MAY_IMPORT[top])
    assert not upward, f"{dotted} imports {upward}: {top}/ may import {sorted(MAY_IMPORT[top])}"
    room = room_of(dotted, path)
    banned = FORBIDDEN_ROOMS.get(room, ())
    crossing = sorted(name for name in ours if any(inside(name, ban) for ban in banned))
    assert not crossing, f"{dotted} (room {room}) imports {crossing}"
    if room in {"core.pure", "core.manifest"}:
        io = sorted(roots(imported) & IO_LIBRARIES)
        assert not io, f"{dotted} is pure but imports {io}"


@pytest.mark.parametrize(("dotted", "path"), ALL, ids=[dotted for dotted, _ in ALL])
def test_no_module_is_over_the_size_budget(dotted, path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{dotted} has {lines} lines (budget {MAX_MODULE_LINES})"


def test_every_sub_package_maps_its_room_in_its_docstring():
    for package in PACKAGES:
        for init in (REPO / package).rglob("__init__.py"):
            if init.parent == REPO / package:
                continue
            tree = ast.parse(init.read_text(encoding="utf-8"))
            doc = ast.get_docstring(tree) or ""
            assert len(doc.splitlines()) >= 3, f"{init.relative_to(REPO)} does not map its room"


def test_no_file_points_outside_the_repo():
    outside = "../" + "shared"
    for path in REPO.rglob("*"):
        if (
            path.is_file()
            and path.suffix in {".py", ".md", ".lua", ".toml", ".sh", ".html", ".service"}
            and not {".venv", ".git", "node_modules", "vendor"} & set(path.parts)
        ):
            text = path.read_text(encoding="utf-8", errors="replace")
            assert outside not in text and "DESIGN" + ".md" not in text, path.relative_to(REPO)


def test_the_import_reader_sees_each_kind_of_import():
    assert roots(imported_modules("import subprocess")) == {"subprocess"}
    assert roots(imported_modules("from redis.asyncio import Redis")) == {"redis"}
    assert roots(imported_modules("import os.path, socket")) == {"os", "socket"}
    assert roots(imported_modules("importlib.import_module('aiohttp.web')")) == {"aiohttp"}
    assert "asyncio" in roots(imported_modules("def f():\n    import asyncio\n"))
    assert "panel.web.api" in imported_modules("from panel.web import api")
    assert "panel.web.api" in imported_modules("from .api import routes", "panel.web")
