"""``core`` never imports the UI stack: every module imports with streamlit, plotly and pyvis blocked.

The import contracts (``pyproject.toml``, ``lint-imports``) read the code; this runs it, so it also catches the UI
stack pulled in through a third-party package, and a core module that no longer imports at all."""

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
