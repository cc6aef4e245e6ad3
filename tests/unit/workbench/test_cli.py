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


def test_demo_opens_provided_worlds_only_and_names_them(tmp_path):
    out = run_cli("demo", "--world", "nope", "--workspace", str(tmp_path / "ws"), "--headless")
    assert out.returncode == 2
    assert "world 'nope'" in out.stderr and "installed: multimodal, text" in out.stderr


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


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (Linux /proc/net/tcp, IPv4)."""
    import socket
    import struct
    from pathlib import Path

    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if int(p, 16) == port and state == "0A":  # LISTEN
            found.add(socket.inet_ntoa(struct.pack("<I", int(addr, 16))))
    return found


@pytest.mark.parametrize("host", [None, "0.0.0.0"])
def test_the_server_listens_on_this_machine_unless_exposed_with_a_token(tmp_path, free_port, host):
    import os
    import signal

    from tests.browser.conftest import wait_http

    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc/net/tcp to read the listening address")
    extra = ["--host", host] if host else []
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "demo", "--headless", "--port", str(free_port),
                             "--workspace", str(tmp_path / "ws"), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "WORKBENCH_TOKEN": ""})
    try:
        wait_http(f"http://127.0.0.1:{free_port}/_stcore/health", proc)
        assert _listening_addresses(free_port) == {host or "127.0.0.1"}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    if host:
        assert "WARNING: listening on 0.0.0.0" in err and "access token " in out
    else:
        assert "WARNING" not in err and "token" not in out


@pytest.mark.parametrize("command", ["score", "perturb"])
def test_out_never_replaces_files_the_workbench_did_not_write(sample_world, tmp_path, capsys, command):
    from workbench import cli

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    extra = ["--find", "consolidation", "--replace", "airspace opacity"] if command == "perturb" else []
    for out in (folder, notes):
        for force in ([], ["--force"]):
            code = cli.main([command, "--world", str(sample_world), "--limit", "1", "--out", str(out), *extra, *force])
            assert code == 2
            err = capsys.readouterr().err
            assert str(out) in err and ("did not write" in err or "is there" in err), err
    assert (folder / "notes.txt").read_text() == "my notes" and notes.read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "notes.txt"]  # no hidden .notes.txt.old


def test_a_previous_result_is_replaced_only_with_force(tmp_path):
    import pandas as pd

    from core.errors import InputError
    from core.io.outputs import (
        PERTURB_COLUMNS,
        check_analysis_folder,
        check_result_file,
    )

    prev = tmp_path / "analysis"
    prev.mkdir()
    (prev / "config.json").write_text("{}")
    pd.DataFrame({"a": [1]}).to_parquet(prev / "tokens.parquet")
    with pytest.raises(InputError, match="previous analysis; add --force"):
        check_analysis_folder(prev, force=False)
    check_analysis_folder(prev, force=True)
    check_analysis_folder(tmp_path / "new", force=False)
    (prev / "README.md").write_text("mine")
    with pytest.raises(InputError, match="did not write.*README.md"):
        check_analysis_folder(prev, force=True)
    result = tmp_path / "pairs.parquet"
    pd.DataFrame({c: [1] for c in PERTURB_COLUMNS}).to_parquet(result)
    with pytest.raises(InputError, match="add --force"):
        check_result_file(result, False, PERTURB_COLUMNS)
    check_result_file(result, True, PERTURB_COLUMNS)
    pd.DataFrame({"other": [1]}).to_parquet(result)
    with pytest.raises(InputError, match="did not write"):
        check_result_file(result, True, PERTURB_COLUMNS)


def test_build_sample_help_and_the_readme_give_the_same_build_times():
    import re

    from workbench.cli import parser

    sub = next(a for a in parser()._actions if a.choices and "build-sample" in a.choices)
    help_text = " ".join(a.help for a in sub._choices_actions if a.dest == "build-sample")
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `workbench build-sample"))
    for text in (help_text, row):  # the text world about 5 minutes, the multimodal one 3.5 (7 on busy cores)
        assert re.search(r"about 5 minutes", text) and "3.5" in text and "up to 7" in text, text


def test_the_readme_command_table_names_real_flags_of_every_job_command():
    """Each job kind has a row in the README's command table, and every flag a row names exists (they are
    generated from the configs, so a renamed field would leave the table wrong)."""
    import re

    from core.jobs import registry
    from workbench import cli

    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Command line", 1)[1].split("\n\n", 2)[1]
    subparsers = cli.parser()._subparsers._group_actions[0].choices
    for kind in registry.KINDS:
        rows = [line for line in table.splitlines() if line.startswith(f"| `workbench {kind} ")]
        assert rows, f"no row for `workbench {kind}` in the README's command table"
        flags = {s for a in subparsers[kind]._actions for s in a.option_strings}
        named = set(re.findall(r"(--[a-z][a-z-]*)", rows[0].split("|")[1]))
        assert named and named <= flags, f"workbench {kind}: {sorted(named - flags)} are not flags"
