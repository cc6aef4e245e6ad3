"""The ``workbench`` command's bad-input paths: clear message naming the path, non-zero exit, nothing overwritten."""

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_the_subcommands():
    out = run_cli("--help")
    assert out.returncode == 0
    for sub in ("app", "demo", "build-sample"):
        assert sub in out.stdout


def test_unwritable_workspace_is_named_and_exits_non_zero(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    out = run_cli("app", "--workspace", str(blocker / "ws"), "--headless")
    assert out.returncode == 2
    assert str(blocker / "ws") in out.stderr and "not writable" in out.stderr
    assert blocker.read_text() == "keep me"


def test_corrupt_database_is_named_and_left_untouched(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "workbench.db").write_bytes(b"garbage" * 50)
    out = run_cli("demo", "--workspace", str(ws), "--headless")
    assert out.returncode == 2
    assert "workbench.db" in out.stderr and "not a usable SQLite database" in out.stderr
    assert (ws / "workbench.db").read_bytes() == b"garbage" * 50


@pytest.mark.parametrize("missing", ["world.json", "model/tokenizer.json", "data/test.jsonl", "concept_graph.json"])
def test_missing_world_file_is_named(quick_world, tmp_path, missing):
    world = tmp_path / "world"
    shutil.copytree(quick_world, world)
    (world / missing).unlink()
    out = run_cli("app", "--world", str(world), "--workspace", str(tmp_path / "ws"), "--headless")
    assert out.returncode == 2
    assert str(world / missing) in out.stderr
