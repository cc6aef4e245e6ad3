"""World plug-ins and provided worlds: the written contract through which a package adds what only its worlds have.

A world's ``world.json`` may name a plug-in (``"plugin": "acme-math"``): the name of an entry point in the group
``cot_drift_workbench.plugins`` that an installed package registers. The engine reads the plug-in's optional
attributes (``WorldPlugin``) and nothing else; it never imports a module a world file names. A package may also
provide ready worlds (entry points in ``cot_drift_workbench.worlds``): the world picker lists them and
``workbench demo --world NAME`` opens them. In the package's pyproject.toml (this package's demo registers its
sample worlds, ``text`` and ``multimodal``, and their plug-ins, ``cxr-demo`` and ``cxr-demo-multimodal``)::

    [project.entry-points."cot_drift_workbench.plugins"]
    acme-math = "acme_worlds.plugin"              # a module (or any object) with WorldPlugin's attributes
    [project.entry-points."cot_drift_workbench.worlds"]
    acme-math = "acme_worlds:world_folder"        # a world folder, or a callable returning one

Entry points are read from the installed packages' metadata: a package's new entry points count once it is
installed (``pip install -e .`` for a checkout), and for the rest of a running process as they were first read.
"""

from __future__ import annotations

import functools
import warnings
from importlib.metadata import EntryPoint, entry_points
from os import PathLike
from pathlib import Path
from typing import Protocol

from core.errors import InputError

PLUGIN_GROUP = "cot_drift_workbench.plugins"
WORLD_GROUP = "cot_drift_workbench.worlds"
# The plug-ins that lived in core until the demo moved out of the engine (issue 21): world.json files written
# then name these modules; each maps to the entry point that replaced it. (A world file naming the module an
# installed entry point names maps to that entry point without this table.)
FORMER_MODULES = {"core.sample.plugin": "cxr-demo", "core.sample.vlplugin": "cxr-demo-multimodal"}


class WorldPlugin(Protocol):
    """What a world's plug-in may define; every attribute is optional (the engine reads each with ``getattr``
    and goes without it when it is missing).

    - ``learning_rate``: the CPO runs page's default learning rate for this world's runs;
    - ``preference_set(world, out) -> str`` and ``preference_label``: a ready preference file (TRL JSONL) built
      into ``out`` and offered for runs under that label;
    - ``extra_metrics(records, preds, perturbed, preds_perturbed) -> dict``: figures added to the held-out
      evaluation (``core.perturb.evaluation.evaluate_model``);
    - ``chart_metrics``: ``{metric: (label, colour, dash)}``, figures the drift and comparison charts draw.
    """

    learning_rate: float
    preference_label: str
    chart_metrics: dict[str, tuple[str, str, str]]

    def preference_set(self, world, out: str | Path) -> str: ...

    def extra_metrics(self, records: list[dict], preds: list, perturbed: list[dict], preds_perturbed: list) -> dict: ...


@functools.cache
def installed(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` by name, in the order the packages' metadata lists them. The same name
    registered twice with the same value (an editable install beside a wheel of it) counts once."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep)
    return found


def load_plugin(name: object, source: str | Path) -> object:
    """The plug-in that ``world.json`` (``source``) names in its field ``plugin``: an installed entry point of
    ``PLUGIN_GROUP`` by name (or by the module it names, or by a former module path, ``FORMER_MODULES``);
    anything else is an ``InputError`` naming the file, the field, the value and the installed names."""
    known = installed(PLUGIN_GROUP)
    ep = _find(name, known) if isinstance(name, str) else None
    if ep is None:
        what = "is not a string" if not isinstance(name, str) else "is not an installed world plug-in"
        raise InputError(f"{source}: field 'plugin' {what} ({name!r}); expected the name of an entry point in the "
                         f"group {PLUGIN_GROUP!r}: {_names(known)}")
    try:
        return ep.load()
    except Exception as e:  # noqa: BLE001 - a third-party module may raise anything on import: name it
        raise InputError(f"{source}: plugin {name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}") from None


def _find(name: str, known: dict[str, EntryPoint]) -> EntryPoint | None:
    name = FORMER_MODULES.get(name, name)
    if name in known:
        return known[name]
    return next((ep for ep in known.values() if ep.value == name), None)


def _names(known: dict) -> str:
    return "installed: " + ", ".join(known) if known else "none is installed (a checkout registers its own with `pip install -e .`)"


def provided_worlds() -> dict[str, Path]:
    """The worlds installed packages provide (``WORLD_GROUP``), by entry point name, in the order of their
    folders (whatever order the metadata lists them in; a world nested in another's folder comes after it: the
    demo's text world, then its multimodal one). One that fails to load or names no folder is left out with a
    warning (``provided_world`` names the reason)."""
    found = {}
    for name in installed(WORLD_GROUP):
        try:
            found[name] = provided_world(name)
        except InputError as e:
            warnings.warn(str(e), stacklevel=2)
    return dict(sorted(found.items(), key=lambda item: (item[1].parts, item[0])))


def provided_world(name: str) -> Path:
    """The folder of the provided world ``name``: the entry point's object, a path or a callable returning one."""
    known = installed(WORLD_GROUP)
    if name not in known:
        raise InputError(f"world {name!r}: no installed package provides it (entry point group {WORLD_GROUP!r}: "
                         f"{_names(known)})")
    ep = known[name]
    try:
        value = ep.load()
        path = value() if callable(value) else value
    except Exception as e:  # noqa: BLE001 - a third-party module may raise anything: name the entry point
        raise InputError(f"world {name!r} ({ep.value}): failed to load: {type(e).__name__}: {e}") from None
    if not isinstance(path, str | PathLike):
        raise InputError(f"world {name!r} ({ep.value}): expected a folder path, got {type(path).__name__}")
    return Path(path).resolve()
