"""Shared fixtures: the committed sample world, a miniature world built by the real pipeline, ports, artifacts."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

# Before torch is imported anywhere (libgomp reads it once, when it loads), and inherited by every worker,
# CLI and server the tests start: OpenMP threads that sleep instead of spinning while they wait. On shared
# cores (CI, or several test runs on one machine) spinning threads starve each other: greedy decoding of 60
# studies with 2 threads took 60-70 s spinning and 0.3-1.0 s passive on a 2-core machine at load 11.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

import pytest

from workbench.demo import SAMPLE_WORLDS

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_GRAPH = SAMPLE_WORLDS["text"] / "concept_graph.json"  # a world of a test's own starts from it


@pytest.fixture(scope="session")
def sample_world() -> Path:
    """The committed text sample world (the demo plug-in's ``text`` world: the checkout's sample_data/)."""
    return SAMPLE_WORLDS["text"]


@pytest.fixture(scope="session")
def quick_world(tmp_path_factory) -> Path:
    """A miniature world (same files and layout as sample_data) built by ``workbench.demo.build`` in seconds."""
    from workbench.demo import build

    out = tmp_path_factory.mktemp("worlds") / "quick"
    build.build(out, build.BuildConfig.quick(), log=lambda m: None)
    return out


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where browser tests keep screenshots (CI keeps this folder)."""
    path = Path(os.environ.get("WORKBENCH_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


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


@pytest.fixture(scope="session")
def foreign_run(tmp_path_factory) -> dict:
    """A run made the way users make one (TRL SFTTrainer, LoRA, ``save_steps``; see tests/foreign.py), with the
    same adapters rearranged in ms-swift's layout (``swift``: its ``output/`` folder). A few seconds."""
    from tests import foreign

    root = tmp_path_factory.mktemp("foreign")
    run = foreign.make_trl_run(root)
    run["swift"] = foreign.make_swift_layout(run["run"], run["base"], root / "swift")
    return run
