"""Shared fixtures: the committed sample world, a miniature world built by the real pipeline, ports, artifacts.

The suite runs on two pytest-xdist workers (``addopts`` in pyproject.toml; ``-n 0`` runs it in one process). Each
worker is a session of its own: session fixtures are per worker, except that the costly builds (the miniature
world, the foreign TRL run) are made once per run and copied into each worker (``built_once``). Nothing a test
writes is shared: every test gets its own ``tmp_path``, ports are free ones, and code that opens the default
workspace gets one of its session's own (``default_workspace``), never the user's ``~/.cot-drift-workbench``;
nothing is written into the checkout but ``test-artifacts/`` (the browser tests' screenshots).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

# Before torch is imported anywhere (libgomp reads it once, when it loads), and inherited by every worker,
# CLI and server the tests start: OpenMP threads that sleep instead of spinning while they wait. On shared
# cores (CI, or several test runs on one machine) spinning threads starve each other: greedy decoding of 60
# studies with 2 threads took 60-70 s spinning and 0.3-1.0 s passive on a 2-core machine at load 11.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

import pytest
from filelock import FileLock  # torch and transformers depend on it
from hypothesis.configuration import set_hypothesis_home_dir

from core.io.roots import ENV_VAR as WORKSPACE_ENV
from workbench.demo import SAMPLE_WORLDS

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_GRAPH = SAMPLE_WORLDS["text"] / "concept_graph.json"  # a world of a test's own starts from it
HYPOTHESIS_HOME = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Hypothesis keeps its files (example database, caches of constants) in a temporary folder of this process,
    not in ``.hypothesis/`` of the checkout; set before collection, when it first writes there."""
    config.stash[HYPOTHESIS_HOME] = Path(tempfile.mkdtemp(prefix="workbench-hypothesis-"))
    set_hypothesis_home_dir(config.stash[HYPOTHESIS_HOME])


def pytest_unconfigure(config: pytest.Config) -> None:
    if HYPOTHESIS_HOME in config.stash:
        shutil.rmtree(config.stash[HYPOTHESIS_HOME], ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which starts the workers
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Benchmarks at full size measure, so they run alone: one process, no xdist worker beside them (at toy size
    they run with the rest and print that their figures are a smoke run)."""
    from tests.benchmarks.conftest import full_size_requested

    params = config.invocation_params
    if getattr(config.option, "numprocesses", None) and full_size_requested(list(params.args), Path(params.dir),
                                                                              dict(os.environ)):
        config.option.numprocesses = 0


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` once per test run; returns a folder of this session's own holding what it built.

    Without xdist that is the build itself. Under pytest-xdist the workers share the run's base temp folder: the
    first worker to ask builds there under a file lock, the others wait for it, and each takes its own copy, as if
    it had built it (tests may write beside what they were given; nothing they write is shared)."""
    own = tmp_path_factory.mktemp(name)
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        build(own)
        return own
    shared = tmp_path_factory.getbasetemp().parent / f"built-{name}"
    done = shared.with_name(shared.name + ".done")
    with FileLock(str(shared) + ".lock"):
        if not done.exists():
            shutil.rmtree(shared, ignore_errors=True)  # what a build that failed half-way left
            shared.mkdir()
            build(shared)
            done.touch()
    shutil.copytree(shared, own, dirs_exist_ok=True, symlinks=True)
    return own


@pytest.fixture(scope="session", autouse=True)
def default_workspace(tmp_path_factory) -> Iterator[Path]:
    """Code that opens the default workspace (``$WORKBENCH_WORKSPACE``) gets one of this session's own, and so do
    the servers and commands the tests start (they inherit the environment); tests that need another set it."""
    path = tmp_path_factory.mktemp("default-workspace")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(WORKSPACE_ENV, str(path))
        yield path


@pytest.fixture(autouse=True)
def real_main_module() -> Iterator[None]:
    """Streamlit's AppTest installs the page it ran as ``sys.modules["__main__"]`` and leaves it there; a process
    started later with multiprocessing's "spawn" would run that page before its own work (and which page it is
    depends on the order the tests ran in). Each test ends with the real ``__main__`` back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def sample_world() -> Path:
    """The committed text sample world (the demo plug-in's ``text`` world: the checkout's sample_data/)."""
    return SAMPLE_WORLDS["text"]


@pytest.fixture(scope="session")
def quick_world(tmp_path_factory) -> Path:
    """A miniature world (same files and layout as sample_data) built by ``workbench.demo.build`` in seconds, once
    per test run (``built_once``)."""
    from workbench.demo import build

    def make(folder: Path) -> None:
        build.build(folder / "quick", build.BuildConfig.quick(), log=lambda m: None)

    return built_once(tmp_path_factory, "worlds", make) / "quick"


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

    def make(root: Path) -> None:
        run = foreign.make_trl_run(root)
        foreign.make_swift_layout(run["run"], run["base"], root / "swift")

    root = built_once(tmp_path_factory, "foreign", make)
    return {**foreign.trl_run_paths(root), "swift": root / "swift" / "output"}
