"""Pages only show: session keys are named in workbench/state.py, every page opens through one preamble.

What a page may import (not the demo, not the command line, no hashlib, os, re, torch...) is an import contract in
pyproject.toml (``lint-imports``; tests/unit/architecture/test_contracts.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

UI_FILES = sorted([*(ROOT / "pages").glob("*.py"), *(ROOT / "workbench").glob("*.py")])
ACCESSORS = {"get", "pop", "setdefault", "update"}


def _is_session_state(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "session_state"


def _string_constants(tree: ast.Module) -> set[str]:
    """Module-level names bound to a string: a key spelled in a page under a name of its own."""
    return {t.id for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
            and isinstance(n.value.value, str) for t in n.targets if isinstance(t, ast.Name)}


def _literal_keys(path: Path, root: Path = ROOT) -> list[str]:
    """Session-state keys written as literals (or module string constants) in ``path``."""
    tree = ast.parse(path.read_text())
    local = _string_constants(tree)

    def literal(key: ast.AST) -> bool:
        if isinstance(key, ast.Dict):  # update({...}): any literal key among them
            return any(k is not None and literal(k) for k in key.keys)
        return isinstance(key, ast.Constant | ast.JoinedStr) or (isinstance(key, ast.Name) and key.id in local)

    found = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Subscript) and _is_session_state(node.value):
            key = node.slice
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ACCESSORS and _is_session_state(node.func.value) and node.args):
            key = node.args[0]
        if key is not None and literal(key):
            found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_session_state_keys_are_named_in_state_py():
    offenders = [hit for path in UI_FILES if path.name != "state.py" for hit in _literal_keys(path)]
    assert not offenders, "name these keys in workbench/state.py:\n" + "\n".join(offenders)


def test_the_check_finds_a_literal_key(tmp_path):
    page = tmp_path / "page.py"
    page.write_text('import streamlit as st\nFLAG = "_x"\nst.session_state["a"] = 1\n'
                    'st.session_state.get(f"b_{1}")\nst.session_state.pop(FLAG)\n'
                    'st.session_state.update({"c": 1})\nst.session_state[state.OK] = 1\n')
    hits = _literal_keys(page, tmp_path)
    assert [h.split(":")[1] for h in hits] == ["3", "4", "5", "6"]


def test_every_page_opens_through_one_preamble():
    """Workspace and world come from ``ui.page_context`` (one way of showing an unusable workspace)."""
    for page in sorted((ROOT / "pages").glob("*.py")):
        text = page.read_text()
        assert text.count("ui.page_context(") == 1, f"{page.name}: open the page with ui.page_context()"
        for own in ("resources.workspace(", "resources.load_world(str(state.world_path", "state.init()",
                    "Cannot open the workspace"):
            assert own not in text, f"{page.name}: {own!r} belongs to ui.page_context"


def test_one_live_fragment():
    """The self-redrawing panel (and its rerun when the last job ends) is written once, in ui.live_fragment."""
    users = [p.name for p in UI_FILES if "run_every" in p.read_text()]
    assert users == ["ui.py"], users


def test_pages_hold_no_domain_rules():
    """The rules moved to core stay there: no environment reads, no run-folder layout or TrainConfig rebuilding, no
    sort rules of the driver tables in a page. (No hashlib, os, re, sqlite3 or torch import in a page: the
    ``thin-pages`` import contract.)"""
    banned = ("os.environ", '/ "cpo" /', "dataclasses.fields(",
              "sort_values(", "synonym_sets(", "WORKBENCH_DATA_ROOTS", "generate_batch(")
    for page in sorted((ROOT / "pages").glob("*.py")):
        text = page.read_text()
        found = [b.strip() for b in banned if b in text]
        assert not found, f"{page.name}: {found} belong in core"
