"""The README's Python snippets run as written: in a fresh process, with a temporary HOME, from the
repository root (where the README's commands run), and they write nothing into the repository."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def python_snippets(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_has_python_snippets():
    assert python_snippets((ROOT / "README.md").read_text())


@pytest.mark.slow
def test_readme_python_snippets_run_as_written(tmp_path):
    before = set(os.listdir(ROOT))
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for i, code in enumerate(python_snippets((ROOT / "README.md").read_text())):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, f"README python snippet {i + 1} failed:\n{code}\n{out.stderr[-3000:]}"
    assert set(os.listdir(ROOT)) == before, "a snippet wrote into the repository (an unexpanded '~'?)"
    assert list((tmp_path / ".cot-drift-workbench" / "cache").glob("tokens-*")), "the cache is under HOME"  # a whole entry or its parts
