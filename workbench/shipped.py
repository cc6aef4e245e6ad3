"""Where the app's own non-code folders are: ``pages/`` and ``sample_data/``, in a checkout or an installed copy.

The lookup, in this order (the one place that decides it):

1. a checkout (``pyproject.toml`` beside the ``workbench`` package, as ``git clone`` and ``pip install -e .`` leave
   it): the folder at the repository root, ``pages/`` or ``sample_data/``;
2. an installed copy (``pip install .``, a wheel): the package data that ``pyproject.toml`` maps into the
   package, ``workbench/pages/`` and ``workbench/demo/sample_data/`` under site-packages.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# name at the repository root -> where an installed copy keeps it (pyproject.toml: [tool.setuptools.package-dir])
INSTALLED = {"pages": PACKAGE / "pages", "sample_data": PACKAGE / "demo" / "sample_data"}


def checkout_root() -> Path | None:
    """The repository root when this package runs from a checkout, else None."""
    root = PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() and (root / "core").is_dir() else None


def shipped(name: str) -> Path:
    """The folder ``name`` (``pages`` or ``sample_data``): the checkout's, else the installed copy's."""
    root = checkout_root()
    if root is not None and (root / name).is_dir():
        return root / name
    return INSTALLED[name]
