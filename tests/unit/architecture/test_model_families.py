"""One model interface (issue 21): the modality is decided once, by the registry of families; the models wing
never reaches up into drift; no module of core imports another's private names; core.models and core.drift
hold no import circle, counting the imports that sit inside functions."""

import ast
import re

import networkx as nx

from tests.conftest import ROOT

CORE = ROOT / "core"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(CORE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def _imports(tree: ast.Module, module: str) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import anywhere in the tree, relative ones resolved."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level]
                base = ".".join(parts + ([base] if base else []))
            out.append((base, [a.name for a in node.names]))
    return out


def test_no_core_module_imports_another_modules_private_names():
    found = [f"{m}: from {src} import {n}" for m, tree in _modules().items() for src, names in _imports(tree, m)
             if src.startswith("core") for n in names if n.startswith("_")]
    assert not found, found


def test_the_models_wing_never_imports_a_wing_above_it():
    above = ("core.drift", "core.perturb", "core.counterfactuals", "core.curation", "core.cpo", "core.workspace")
    found = [f"{m} imports {src}" for m, tree in _modules().items() if m.startswith("core.models")
             for src, _ in _imports(tree, m) if src.startswith(above)]
    assert not found, found


def test_no_import_circle_in_models_and_drift():
    graph = nx.DiGraph()
    mods = _modules()
    for m, tree in mods.items():
        if not m.startswith(("core.models", "core.drift")):
            continue
        for src, names in _imports(tree, m):
            targets = [f"{src}.{n}" for n in names if f"{src}.{n}" in mods] or [src]  # "from pkg import module"
            graph.add_edges_from((m, t) for t in targets if t.startswith(("core.models", "core.drift")) and t != m)
    graph.remove_edges_from([(a, b) for a, b in graph.edges if a.startswith(b + ".")])  # a package's own __init__
    assert not list(nx.simple_cycles(graph)), list(nx.simple_cycles(graph))


def test_the_modality_is_decided_only_by_the_registry():
    """Nothing outside core/models/families reads a config's vision tower or asks whether a series has a
    processor; callers ask ``series.family`` / ``world.family`` (``World.is_vl`` asks the family)."""
    patterns = [r'getattr\([a-z_.]*, "processor"', r"is_vl_folder", r"vision_config", r"VL_MODEL_TYPES",
                r"isinstance\([^)]*VLSeries"]
    found = []
    for folder in ("core", "workbench", "pages"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.is_relative_to(CORE / "models" / "families") or path == CORE / "models" / "fit.py" or \
                    path.is_relative_to(ROOT / "workbench" / "demo"):
                continue  # the registry; fit.py reads a vision tower's size (a shape, not a kind); the demo builds one
            text = path.read_text(encoding="utf-8")
            found += [f"{path.relative_to(ROOT)}: {p}" for p in patterns if re.search(p, text)]
    assert not found, found


def test_the_minimum_image_size_is_one_constant():
    found = [str(p.relative_to(ROOT)) for folder in ("core", "workbench", "pages") for p in (ROOT / folder).rglob("*.py")
             if re.search(r"28 \* 28", p.read_text(encoding="utf-8")) and p != CORE / "models" / "vision.py"]
    assert not found, f"the 28x28 minimum is written outside core.models.vision.MIN_PIXELS: {found}"
