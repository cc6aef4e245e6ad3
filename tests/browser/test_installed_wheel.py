"""A package that installs: the wheel, installed into a fresh virtualenv outside the checkout, serves the app,
its pages and both sample worlds (``workbench demo`` from a folder that is not the checkout).

The new virtualenv reuses this one's dependencies through a ``.pth`` file (a line naming a folder adds it to
``sys.path``; the ``.pth`` files inside that folder, among them the checkout's editable finder, are not run), so
``core`` and ``workbench`` can only come from the wheel: the test checks that they do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.browser.conftest import stop, wait_http
from tests.conftest import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PACKAGED = ("pyproject.toml", "README.md", "LICENSE", "core", "workbench", "pages", "sample_data")
SKIP = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.building", "*.old", ".*.old")


def _run(cmd: list, cwd: Path, timeout: float = 300, env: dict | None = None) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, f"{cmd}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def build_wheel(dest: Path) -> Path:
    """``pip wheel . --no-deps`` of a copy of the checkout's packaged files (a build writes build/ and *.egg-info
    beside its sources: never into the checkout)."""
    src = dest / "src"
    for name in PACKAGED:
        path = ROOT / name
        (shutil.copytree(path, src / name, ignore=SKIP) if path.is_dir() else
         (src.mkdir(exist_ok=True), shutil.copy2(path, src / name)))
    # offline when this environment has a build backend new enough for pyproject.toml (a license string:
    # setuptools >= 77); else pip fetches one into an isolated build environment, as `pip install` does
    isolation = ["--no-build-isolation"] if _setuptools_major() >= 77 else []
    _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", *isolation, "-q", "-w", dest / "dist"], dest)
    return next((dest / "dist").glob("cot_drift_workbench-*.whl"))


def _setuptools_major() -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("setuptools").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return 0


def fresh_venv(path: Path, wheel: Path) -> Path:
    """A new virtualenv with the wheel installed (by its own pip) and this environment's dependencies."""
    _run([sys.executable, "-m", "venv", path], path.parent)
    python = path / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], path.parent)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], path.parent).strip())
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(root)
    python = fresh_venv(root / "venv", wheel)
    return root, wheel, python


def test_the_wheel_carries_the_pages_and_both_sample_worlds(installed):
    _, wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    pages = sorted(p.name for p in (ROOT / "pages").glob("*.py"))
    assert {f"workbench/pages/{p}" for p in pages} <= names
    shipped = {str(p.relative_to(ROOT / "sample_data")) for p in (ROOT / "sample_data").rglob("*")
               if p.is_file() and not any(d == "__pycache__" or d.endswith((".building", ".old")) for d in p.parts)}
    assert {f"workbench/demo/sample_data/{p}" for p in shipped} == {n for n in names if "/sample_data/" in n}
    assert not any("__pycache__" in n or n.startswith(("tests/", "pages/", "sample_data/")) for n in names)
    size = wheel.stat().st_size / 2**20
    print(f"\nwheel {wheel.name}: {size:.1f} MB, {len(names)} files")
    assert size < 30


def test_the_installed_copy_is_served_from_the_new_environment(installed):
    root, _, python = installed
    probe = ("import json, core, workbench\nfrom core.workspace import plugins\nfrom workbench.shipped import shipped\n"
             "print(json.dumps({'core': core.__file__, 'workbench': workbench.__file__, 'pages': str(shipped('pages')),"
             " 'worlds': {k: str(v) for k, v in plugins.provided_worlds().items()}}))")
    found = json.loads(_run([python, "-c", probe], root))
    venv = (root / "venv").resolve()
    assert all(Path(v).resolve().is_relative_to(venv) for v in (found["core"], found["workbench"], found["pages"]))
    assert set(found["worlds"]) == {"text", "multimodal"}
    assert all(Path(v).resolve().is_relative_to(venv) for v in found["worlds"].values())


def test_workbench_demo_from_the_wheel_serves_home_and_the_explorer(installed, browser, free_port, artifacts):
    root, _, python = installed
    cwd = root / "elsewhere"  # not the checkout: nothing may be found through the current folder
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cmd = [python.parent / "workbench", "demo", "--headless", "--port", str(free_port), "--workspace", root / "ws"]
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{free_port}"
    try:
        wait_http(url + "/_stcore/health", proc, timeout=120)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_text("Checkpoint series").wait_for(timeout=90_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        assert page.get_by_text("CoT Drift Workbench").first.is_visible()
        assert page.get_by_text("Llama", exact=True).first.is_visible()  # the text sample world's model
        page.screenshot(path=str(artifacts / "installed-home.png"), full_page=True)
        assert page.locator("[data-testid='stException']").count() == 0
        page.goto(url + "/explorer")  # the shipped analysis of the installed sample world
        page.get_by_text("What drives the drift").wait_for(timeout=120_000)
        page.screenshot(path=str(artifacts / "installed-explorer.png"), full_page=True)
        assert page.locator("[data-testid='stException']").count() == 0
        page.close()
    finally:
        stop(proc)
    log = proc.stdout.read()
    assert f"workbench: world {(root / 'venv').resolve()}" in log, log  # the world it opened: the installed copy's
