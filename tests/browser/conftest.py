"""Browser-test fixtures: a running ``workbench`` server and a real headless Chromium (Debian's)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="session")
def browser():
    exe = chromium_path()
    if exe is None:
        if os.environ.get("WORKBENCH_REQUIRE_BROWSER"):
            pytest.fail("no Chromium found; install Debian's chromium package (apt-get install chromium)")
        pytest.skip("no Chromium found (apt-get install chromium); CI installs it and runs these tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


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


@pytest.fixture
def app_server(free_port, tmp_path):
    """``workbench demo`` on a free port with a fresh workspace; yields (url, seconds until it answered)."""
    cmd = [sys.executable, "-m", "workbench.cli", "demo", "--headless", "--port", str(free_port),
           "--workspace", str(tmp_path / "ws")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{free_port}"
    try:
        seconds = wait_http(url + "/_stcore/health", proc)
        yield url, seconds
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
