"""``core`` never imports the UI stack: every module imports with streamlit, plotly and pyvis blocked."""

import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = """
import importlib, pkgutil, sys
for name in ("streamlit", "plotly", "pyvis"):
    sys.modules[name] = None  # any import of these now raises ImportError
import core
names = [m.name for m in pkgutil.walk_packages(core.__path__, "core.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_every_core_module_imports_without_streamlit_plotly_pyvis():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 10  # the walk really found the modules


def _core_imports(module: str) -> set[str]:
    import ast

    tree = ast.parse((ROOT / "core" / f"{module}.py").read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_probe_and_scoring_do_not_import_each_other():
    """Model internals live in core.models.forward, progress and cancellation in core.progress: no import circle."""
    assert "core.drift.scoring" not in _core_imports("drift/probe")
    assert "core.drift.probe" not in _core_imports("drift/scoring")
    assert "core.drift.scoring" not in _core_imports("perturb/text")
