"""A world: a base model, its checkpoint series, trajectory datasets and a concept graph in one folder.

``sample_data/`` is the embedded demo world; any folder with a ``world.json`` manifest of the same shape
is one too. ``load_world`` checks every file the manifest names and says which one is missing.

    w = load_world("sample_data")
    w.summary()      # plain dict for the Home page: model, tokenizer, checkpoints, graph, datasets, device
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from core import checkpoints, concepts
from core.errors import InputError

MANIFEST = "world.json"
REQUIRED_MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
SAMPLE_WORLD = Path(__file__).resolve().parent.parent / "sample_data"


@dataclass
class World:
    root: Path
    manifest: dict
    checkpoints: list[checkpoints.CheckpointInfo]

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.root.name)

    @property
    def base_model_dir(self) -> Path:
        return self.root / self.manifest["base_model"]

    def dataset_path(self, name: str) -> Path:
        if name not in self.manifest["datasets"]:
            raise InputError(f"{self.root / MANIFEST}: no dataset {name!r} (known: {sorted(self.manifest['datasets'])})")
        return self.root / self.manifest["datasets"][name]["path"]

    @property
    def graph_path(self) -> Path:
        return self.root / self.manifest["concept_graph"]

    @property
    def analysis_dir(self) -> Path | None:
        """The drift analysis shipped with the world (``workbench score --world W --out W/analysis``), if any."""
        path = self.root / self.manifest.get("analysis", "analysis")
        return path if (path / "config.json").is_file() else None

    @property
    def answer_format(self):
        """How completions state their answer (``world.json``: ``answer_format``; default: ``core.answers``)."""
        from core.answers import AnswerFormat

        return AnswerFormat.from_dict(self.manifest.get("answer_format"), f"{self.root / MANIFEST}: answer_format")

    @property
    def plugin(self):
        """The world's plug-in module (``world.json``: ``"plugin": "package.module"``), or None: what only this
        world has (its own metrics, default learning rate, preference set); see ``core.sample.plugin``."""
        name = self.manifest.get("plugin")
        if not name:
            return None
        import importlib

        try:
            return importlib.import_module(name)
        except ImportError as e:
            raise InputError(f"{self.root / MANIFEST}: plugin {name!r} cannot be imported ({e})") from None

    def evaluation_spec(self) -> dict:
        """``{"held_out": dataset name, "perturbed": dataset name or None}``; empty when there is none."""
        spec = self.manifest.get("evaluation") or {}
        for key in ("held_out", "perturbed"):
            if spec.get(key) and spec[key] not in self.manifest["datasets"]:
                raise InputError(f"{self.root / MANIFEST}: evaluation.{key} names no dataset ({spec[key]!r}; "
                                 f"known: {sorted(self.manifest['datasets'])})")
        return spec

    def chart_metrics(self) -> dict:
        """Extra figures this world's charts draw: ``{metric: (label, colour, dash)}`` from its plug-in."""
        return dict(getattr(self.plugin, "chart_metrics", {}) or {})

    def metrics(self) -> list[dict]:
        """The per-checkpoint drift table recorded when the world was built (empty if none)."""
        path = self.root / self.manifest.get("metrics", "metrics.json")
        try:
            return json.loads(path.read_text()) if path.is_file() else []
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e})") from None

    def fingerprint(self) -> str:
        """Hash of the manifest and the weight files' sizes and mtimes: changes when the world changes."""
        h = hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode())
        for f in sorted(self.root.rglob("*.safetensors")):
            st = f.stat()
            h.update(f"{f.relative_to(self.root)}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    def summary(self) -> dict:
        try:
            cfg = json.loads((self.base_model_dir / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{self.base_model_dir / 'config.json'}: not valid JSON ({e})") from None
        graph = concepts.load_graph(self.graph_path)
        return {
            "name": self.name, "root": str(self.root), "description": self.manifest.get("description", ""),
            "model": {"architecture": (cfg.get("architectures") or [cfg.get("model_type", "?")])[0],
                      "parameters": count_parameters(self.base_model_dir), "layers": cfg.get("num_hidden_layers"),
                      "hidden_size": cfg.get("hidden_size"), "path": str(self.base_model_dir)},
            "tokenizer": {"vocab_size": cfg.get("vocab_size")},
            "checkpoints": [{"name": c.name, "step": c.step, "kind": c.kind,
                             "reward": c.metrics.get("reward"), "loss": c.metrics.get("loss")}
                            for c in self.checkpoints],
            "graph": {"nodes": graph.number_of_nodes(), "edges": graph.number_of_edges(),
                      "diseases": len(concepts.diseases(graph)), "findings": len(concepts.findings(graph))},
            "datasets": {k: v["records"] for k, v in self.manifest["datasets"].items()},
        }


def count_parameters(model_dir: Path) -> int:
    """Parameter count from the safetensors headers, without loading any weights."""
    from safetensors import safe_open

    total = 0
    for f in model_dir.glob("*.safetensors"):
        try:
            with safe_open(str(f), framework="numpy") as st:
                for key in st.keys():
                    n = 1
                    for d in st.get_slice(key).get_shape():
                        n *= d
                    total += n
        except Exception as e:  # noqa: BLE001 - safetensors' own error type: name the file
            raise InputError(f"{f}: unreadable safetensors file ({e})") from None
    return total


def load_world(root: str | Path = SAMPLE_WORLD) -> World:
    """Read and check a world folder; ``InputError`` names the first missing or malformed file."""
    root = Path(root).expanduser().resolve()
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise InputError(f"{root}: world folder not found")
    if not manifest_path.is_file():
        raise InputError(f"{manifest_path}: missing world manifest (run `workbench build-sample` to rebuild "
                         "the sample world)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{manifest_path}: not valid JSON ({e})") from None
    for key in ("base_model", "checkpoints", "concept_graph", "datasets"):
        if key not in manifest:
            raise InputError(f"{manifest_path}: missing field '{key}'")
    if not isinstance(manifest["datasets"], dict) or not all(
            isinstance(d, dict) and isinstance(d.get("path"), str) and isinstance(d.get("records"), int)
            for d in manifest["datasets"].values()):
        raise InputError(f"{manifest_path}: field 'datasets' must map names to {{\"path\": str, \"records\": int}}")
    expected = [root / manifest["base_model"] / f for f in REQUIRED_MODEL_FILES]
    expected += [root / manifest["concept_graph"]]
    expected += [root / d["path"] for d in manifest["datasets"].values()]
    for path in expected:
        if not path.is_file():
            raise InputError(f"{path}: missing file of world {root} (expected by {MANIFEST})")
    if not list((root / manifest["base_model"]).glob("*.safetensors")):
        raise InputError(f"{root / manifest['base_model']}: no *.safetensors weights found")
    return World(root, manifest, checkpoints.discover(root / manifest["checkpoints"]))
