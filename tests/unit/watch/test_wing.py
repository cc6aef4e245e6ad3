"""The watch wing's place: only the top (pages, workbench, the command line) imports it; it imports the wings below."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

BELOW = ("core.drift", "core.models", "core.workspace", "core.io", "core.jobs", "core.graph", "core.errors",
         "core.progress", "core.watch")


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_nothing_in_the_engine_imports_the_watch():
    users = [p.relative_to(ROOT).as_posix() for p in (ROOT / "core").rglob("*.py")
             if "watch" not in p.relative_to(ROOT / "core").parts
             and any(m == "core.watch" or m.startswith("core.watch.") for m in _imports(p))]
    assert users == []


def test_the_watch_imports_only_the_wings_below_it():
    for path in (ROOT / "core" / "watch").glob("*.py"):
        ours = {m for m in _imports(path) if m == "core" or m.startswith("core.")}
        assert all(m.startswith(BELOW) for m in ours), f"{path.name}: {sorted(m for m in ours if not m.startswith(BELOW))}"
