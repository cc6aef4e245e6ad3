"""Where modules meet: each shared idea has one home, the linter runs in CI, TRL's private hooks are checked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


# ---------------------------------------------------------------------------------------- linter and CI

def test_ci_runs_the_readme_test_command_verbatim_then_ruff():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"```bash\n(python3 -m venv .venv && [^\n]*pytest)\n```", readme).group(1)
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    test_line = next(i for i, line in enumerate(lines) if line.startswith(command))
    ruff_line = next(i for i, line in enumerate(lines) if line.startswith(".venv/bin/ruff check ."))
    assert test_line < ruff_line, "ruff runs after the install that brings it"
    assert lines[test_line].endswith("|| status=$?") and lines[ruff_line].endswith("|| status=$?")
    assert lines[-1] == 'exit "$status"'  # a failure of either fails CI
    assert "ruff" in (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]


def test_ruff_passes_when_installed():
    ruff = shutil.which("ruff", path=str(ROOT / ".venv" / "bin")) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' brings it)")
    out = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_docstring_names_every_subcommand():
    from workbench import cli

    subcommands = cli.parser()._subparsers._group_actions[0].choices
    assert "come with the engine" not in cli.__doc__
    for name in subcommands:
        assert f"workbench {name}" in cli.__doc__, f"the module docstring of workbench/cli.py misses {name!r}"


# ---------------------------------------------------------------------------------------- import-time weight

def _modules_after(code: str) -> set[str]:
    """The heavy modules a fresh interpreter holds after running ``code``."""
    probe = code + "\nimport sys; print(' '.join(m for m in ('torch', 'trl', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_a_train_config_is_built_without_torch_or_trl():
    loaded = _modules_after("from core.cpo import TrainConfig, OBJECTIVES\n"
                            "TrainConfig(base_model='m', data='d.jsonl', output_dir='o', objective='cpo++')")
    assert not loaded, f"building a TrainConfig imported {sorted(loaded)}"


def test_the_pages_cached_access_imports_without_torch():
    loaded = _modules_after("import workbench.resources")
    assert not loaded, f"importing workbench.resources imported {sorted(loaded)}"


def test_the_trainer_checks_objectives_from_the_config():
    from core import cpo, cpo_trainer

    assert cpo_trainer.OBJECTIVES is cpo.OBJECTIVES
    with pytest.raises(ValueError, match="objective"):
        cpo.TrainConfig(base_model="m", data="d", output_dir="o", objective="ppo")
