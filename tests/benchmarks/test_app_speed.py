"""App speed vs a bare Streamlit app, both served and rendered in headless Chromium in this run.

Target (DESIGN.md): pages render from cached results in under a second; cold start to first page in
seconds. Prints server start, first render and cached redraw for both apps, and the ratios.
"""

import subprocess
import sys
import time

import pytest

from tests.browser.conftest import stop, wait_http
from tests.conftest import ROOT

pytestmark = [pytest.mark.benchmark, pytest.mark.browser, pytest.mark.slow]

BARE_APP = 'import streamlit as st\nst.title("Bare")\nst.write("Checkpoint series")\n'


def _measure(browser, cmd, port, redraw_rounds, env=None):
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        t0 = time.monotonic()
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc)
        server = time.monotonic() - t0
        page = browser.new_page()
        t1 = time.monotonic()
        page.goto(f"http://127.0.0.1:{port}")
        page.get_by_text("Checkpoint series").first.wait_for(timeout=60_000)
        first = time.monotonic() - t1
        redraws = []
        for _ in range(redraw_rounds):
            t2 = time.monotonic()
            page.reload()
            page.get_by_text("Checkpoint series").first.wait_for(timeout=60_000)
            redraws.append(time.monotonic() - t2)
        page.close()
        return server, first, min(redraws)
    finally:
        stop(proc)


def test_cold_start_and_cached_redraw_vs_bare_streamlit(browser, tmp_path, free_port, size):
    bare = tmp_path / "bare.py"
    bare.write_text(BARE_APP)
    base = _measure(browser, [sys.executable, "-m", "streamlit", "run", str(bare), "--server.headless", "true",
                              "--server.port", str(free_port), "--browser.gatherUsageStats", "false"], free_port,
                    size(3, 1))
    port2 = free_port + 1
    ours = _measure(browser, [sys.executable, "-m", "workbench.cli", "demo", "--headless", "--port", str(port2),
                              "--workspace", str(tmp_path / "ws")], port2, size(3, 1))
    print(size.header())
    print("\n                 server start  first page  cached redraw")
    for name, (s, f, r) in (("bare streamlit", base), ("workbench home", ours)):
        print(f"{name:16} {s:11.2f}s {f:10.2f}s {r:13.2f}s")
    print(f"ratio workbench/bare: cold start {(ours[0] + ours[1]) / (base[0] + base[1]):.2f}x, "
          f"cached redraw {ours[2] / base[2]:.2f}x; workbench cached redraw {ours[2]:.2f} s (target < 1 s)")


def _rerun_seconds(script, session_state, runs=5):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(script), default_timeout=60)
    for k, v in session_state.items():
        at.session_state[k] = v
    at.run()
    best = float("inf")
    for _ in range(runs):
        t = time.monotonic()
        at.run()
        best = min(best, time.monotonic() - t)
    assert not at.exception
    return best


def test_script_rerun_from_cache_vs_bare_streamlit(tmp_path, sample_world, size):
    from workbench import state

    bare = tmp_path / "bare.py"
    bare.write_text(BARE_APP)
    base = _rerun_seconds(bare, {}, size(5, 1))
    ours = _rerun_seconds(ROOT / "pages" / "home.py", {state.WORLD_PATH: str(sample_world)}, size(5, 1))
    print(f"\nscript rerun from cache: workbench home {ours * 1000:.0f} ms, bare {base * 1000:.0f} ms, "
          f"ratio {ours / base:.2f}x (target: page from cache < 1 s){size.header()}")
