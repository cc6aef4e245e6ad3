"""Browser-test fixtures: a running ``workbench`` server (the browser itself is in tests/conftest.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started with ``start_new_session=True`` and everything it started."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> float:
    """Poll ``url`` until it answers; return the seconds it took. Fail early if the server died."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return time.monotonic() - start
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def served(args: list[str], port: int):
    """``python -m workbench.cli *args`` (a server on ``port``) until the block ends; yields its URL once it answers."""
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/_stcore/health", proc)
        yield url
    finally:
        stop(proc)


@pytest.fixture
def app_server(free_port, tmp_path):
    """``workbench demo`` on a free port with a fresh workspace; yields (url, seconds until it answered)."""
    cmd = [sys.executable, "-m", "workbench.cli", "demo", "--headless", "--port", str(free_port),
           "--workspace", str(tmp_path / "ws")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "WORKBENCH_DATA_ROOTS": str(tmp_path)})
    url = f"http://127.0.0.1:{free_port}"
    try:
        seconds = wait_http(url + "/_stcore/health", proc)
        yield url, seconds
    finally:
        stop(proc)
