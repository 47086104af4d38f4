"""The pure core modules open no socket and start no process (STYLE: a pure core)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "core"
PURE_MODULES = [
    "manifest",
    "validation",
    "regex_safety",
    "signing",
    "sealing",
    "keyring",
    "retry",
    "keys",
    "errors",
    "reasons",
    "strict_json",
    "stream_ids",
    "text",
]
FORBIDDEN = {"redis", "aiohttp", "subprocess", "socket", "asyncio"}


def imported_roots(source: str) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", ""))
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            roots.add(node.args[0].value.split(".")[0])
    return roots


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_core_module_imports_no_io_library(module):
    path = CORE / f"{module}.py"
    assert path.exists(), f"core/{module}.py is listed as pure but does not exist"
    bad = imported_roots(path.read_text()) & FORBIDDEN
    assert not bad, f"core/{module}.py imports {sorted(bad)}"


def test_the_purity_check_catches_each_kind_of_import():
    assert imported_roots("import subprocess") == {"subprocess"}
    assert imported_roots("from redis.asyncio import Redis") == {"redis"}
    assert imported_roots("import os.path, socket") == {"os", "socket"}
    assert imported_roots("importlib.import_module('aiohttp.web')") == {"aiohttp"}
    assert "asyncio" in imported_roots("def f():\n    import asyncio\n")
