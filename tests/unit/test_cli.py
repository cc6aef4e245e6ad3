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


@pytest.mark.slow
def test_stopping_workbench_stops_its_server(tmp_path, free_port):
    import signal
    import time
    import urllib.request

    from tests.browser.conftest import wait_http

    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "demo", "--headless", "--port", str(free_port),
                             "--workspace", str(tmp_path / "ws")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{free_port}/_stcore/health"
    wait_http(url, proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            time.sleep(0.3)
        except OSError:
            return
    pytest.fail("the Streamlit server outlived the workbench process")
