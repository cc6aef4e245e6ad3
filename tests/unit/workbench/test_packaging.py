"""pyproject.toml packs every package and maps pages/ and sample_data/ where ``workbench.shipped`` looks for them
(the wheel itself is built, installed and served in tests/browser/test_installed_wheel.py)."""

from pathlib import Path

import pytest

from tests.conftest import ROOT
from workbench import shipped

tomllib = pytest.importorskip("tomllib")


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_python_package_is_listed_for_the_wheel():
    """A new subpackage (a wing's) that is not in the list would be missing from an installed copy."""
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("core", "workbench")
             for p in (ROOT / top).rglob("__init__.py")}
    mapped = set(_setuptools()["package-dir"])
    assert set(_setuptools()["packages"]) == found | mapped


def test_the_mapped_folders_are_where_an_installed_copy_is_looked_up():
    mapping = _setuptools()["package-dir"]
    for name, installed in shipped.INSTALLED.items():
        package = ".".join(installed.relative_to(shipped.PACKAGE.parent).parts)
        assert mapping[package] == name
    assert _setuptools()["package-data"]["workbench.demo.sample_data"] == ["**/*"]  # its subfolders too


def test_a_checkout_finds_its_own_folders():
    assert shipped.checkout_root() == ROOT
    assert shipped.shipped("pages") == ROOT / "pages" and shipped.shipped("sample_data") == ROOT / "sample_data"
    assert not list((ROOT / "sample_data").rglob("*.py"))  # build-sample swaps the folder: no code lives in it
    assert Path(shipped.__file__).parent == shipped.PACKAGE
