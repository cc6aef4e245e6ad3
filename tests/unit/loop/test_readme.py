"""The README's Python snippets run as written: in a fresh process, with a temporary HOME, from the
repository root (where the README's commands run), and they write nothing into the repository."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


# What the test session itself may add to the repository root meanwhile (another xdist worker's screenshots,
# pytest's cache): the documented, git-ignored outputs of a test run.
SUITE_OUTPUTS = {"test-artifacts", ".pytest_cache"}


def python_snippets(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_has_python_snippets():
    assert python_snippets((ROOT / "README.md").read_text())


@pytest.mark.slow
def test_readme_python_snippets_run_as_written(tmp_path):
    before = set(os.listdir(ROOT)) - SUITE_OUTPUTS
    # as a user runs them: no $WORKBENCH_WORKSPACE (the suite sets one per session), so the workspace is under HOME
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_WORKSPACE"}
    env |= {"HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for i, code in enumerate(python_snippets((ROOT / "README.md").read_text())):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, f"README python snippet {i + 1} failed:\n{code}\n{out.stderr[-3000:]}"
    assert set(os.listdir(ROOT)) - SUITE_OUTPUTS == before, "a snippet wrote into the repository (an unexpanded '~'?)"
    assert list((tmp_path / ".cot-drift-workbench" / "cache").glob("tokens-*")), "the cache is under HOME"  # a whole entry or its parts
