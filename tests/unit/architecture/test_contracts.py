"""The import contracts (``[tool.importlinter]`` in pyproject.toml) hold, and each one catches what it forbids.

``lint-imports`` runs in ``.ci/run``; running it here too means a plain ``pytest`` catches a broken contract. A
second run over a copy of the code with one planted violation per contract shows that none of them is vacuous.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from tests.conftest import ROOT

if sys.version_info < (3, 11):  # import-linter 2.17 (and tomllib) need 3.11; CI runs 3.11
    pytest.skip("the import contracts are checked on Python 3.11+", allow_module_level=True)

from tests.unit.architecture.contracts import find_cycles

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` in ``cwd`` (its pyproject.toml, its packages), one line per contract, nothing cached."""
    assert LINT_IMPORTS.exists(), "import-linter is missing: pip install -e '.[test]' brings it"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"COLUMNS": "1000"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=120)


def contracts() -> dict[str, str]:
    """Contract id -> name, from pyproject.toml."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c["name"] for c in config["contracts"]}


def verdicts(output: str) -> dict[str, str]:
    """Contract name -> KEPT or BROKEN, read from lint-imports' summary."""
    found = {}
    for name in contracts().values():
        line = next((line for line in output.splitlines() if line.startswith(f"{name} ")), "")
        found[name] = line[len(name):].split()[0] if line else "missing"
    return found


def test_the_import_contracts_hold():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(verdicts(out.stdout).values()) == {"KEPT"}, out.stdout


# One planted violation per contract: (contract id, file to add or extend, its code, what the report names).
PLANTED = [
    ("ui-over-engine", "core/io/planted_ui.py", "import workbench.state\n", "core.io.planted_ui -> workbench.state"),
    ("engine-without-ui", "core/io/planted_plot.py", "def figure():\n    import plotly\n",  # inside a function
     "core.io.planted_plot -> plotly"),
    ("wings", "core/io/planted_upward.py", "import core.cpo\n", "core.io.planted_upward -> core.cpo"),
    ("wings", "core/planted_wing/__init__.py", '"""A new wing must take its place in the layers."""\n',
     "not listed as layers:\n\n- core.planted_wing"),  # the contract is exhaustive
    ("demo-plugin", "workbench/planted_demo.py", "from workbench.demo import build\n",
     "workbench.planted_demo -> workbench.demo.build"),
    ("cli-on-top", "pages/planted_cli.py", "from workbench import cli\n", "pages.planted_cli -> workbench.cli"),
    ("thin-pages", "pages/planted_regex.py", "import re\n", "pages.planted_regex -> re"),
    ("scoring-apart", "core/drift/probe.py", "\nfrom core.drift import scoring  # noqa\n",
     "core.drift.probe -> core.drift.scoring"),
    ("probe-apart", "core/drift/scoring.py", "\nfrom core.drift import probe  # noqa\n",
     "core.drift.scoring -> core.drift.probe"),
    # a package whose __init__ imports a child that imports the package back: a cycle between a package and its
    # own module, which import-linter's acyclic_siblings (cycles between siblings only) does not see
    ("no-cycles", "core/io/planted/__init__.py", "from core.io.planted import child\n",
     "Import cycle: core.io.planted -> core.io.planted.child -> core.io.planted"),
    ("no-cycles", "core/io/planted/child.py", "def parent():\n    import core.io.planted\n",
     "core.io.planted.child -> core.io.planted"),
]


def _copy_of_the_code(dest: Path) -> Path:
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("core", "workbench", "pages"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=skip)
    for name in ("pyproject.toml", "tests/__init__.py", "tests/unit/__init__.py", "tests/unit/architecture/__init__.py",
                 "tests/unit/architecture/contracts.py"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, dest / name)
    return dest


def test_every_contract_catches_a_planted_violation(tmp_path):
    code = _copy_of_the_code(tmp_path / "code")
    for _, path, text, _ in PLANTED:
        target = code / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((target.read_text() if target.exists() else "") + text)
    out = lint_imports(code)
    assert out.returncode == 1, out.stdout + out.stderr
    assert set(verdicts(out.stdout).values()) == {"BROKEN"}, out.stdout
    for contract, _, _, named in PLANTED:
        assert named in out.stdout, f"{contract}: the report does not name {named!r}\n{out.stdout}"


@pytest.mark.parametrize("edges, cycles", [
    ([("a", "b"), ("b", "c")], []),
    ([("a", "b"), ("b", "a"), ("b", "c")], [["a", "b", "a"]]),
    ([("p", "p.x"), ("p.x", "p")], [["p", "p.x", "p"]]),  # a package and its child
    ([("a", "a")], [["a", "a"]]),  # a module that imports itself
    ([("a", "b"), ("b", "c"), ("c", "a"), ("c", "b")], [["b", "c", "b"]]),  # the shortest cycle of the knot
    ([("a", "b"), ("b", "a"), ("x", "y"), ("y", "x")], [["a", "b", "a"], ["x", "y", "x"]]),  # one per knot
])
def test_cycles_are_found_and_named(edges, cycles):
    assert find_cycles(nx.DiGraph(edges)) == cycles
