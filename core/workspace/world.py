"""A world: a base model, its checkpoint series, trajectory datasets and a concept graph in one folder.

Any folder with a ``world.json`` manifest is a world; ``load_world`` checks every file the manifest names and
says which one is missing. The engine knows no world of its own: installed packages provide ready worlds and
the plug-ins worlds name (``core.workspace.plugins``; this package's demo provides the two sample worlds).

    w = load_world("path/to/world")
    w.summary()      # plain dict for the Home page: model, tokenizer, checkpoints, graph, datasets, device
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from core.errors import InputError
from core.graph import concepts
from core.io import jsonsafe
from core.io.paths import expand
from core.models import checkpoints
from core.workspace import plugins

MANIFEST = "world.json"


@dataclass
class World:
    root: Path
    manifest: dict
    checkpoints: list[checkpoints.CheckpointInfo]

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.root.name)

    @property
    def key(self) -> str:
        """What the workspace database files the world's items under (``trajectories.world``, jobs, snapshots,
        runs): its folder, resolved, as the worlds registry names it."""
        return str(self.root)

    @property
    def base_model_dir(self) -> Path:
        return self.root / self.manifest["base_model"]

    def dataset_path(self, name: str) -> Path:
        if name not in self.manifest["datasets"]:
            raise InputError(f"{self.root / MANIFEST}: no dataset {name!r} (known: {sorted(self.manifest['datasets'])})")
        return self.root / self.manifest["datasets"][name]["path"]

    @property
    def family(self):
        """The base model's family (``core.models.families``, from its config.json); ``UnsupportedModel``
        (an ``InputError``) naming the model_type when no family serves it."""
        from core.models.families import family_for  # imports torch: a world is read without it

        return family_for(self.base_model_dir)

    @property
    def is_vl(self) -> bool:
        """Whether the base model reads images (its family's modality), so its trajectories may carry them;
        an unsupported or missing base reads as text here (loading it names the refusal)."""
        try:
            return self.family.reads_images
        except InputError:
            return False

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
        """How completions state their answer (``world.json``: ``answer_format``; default: ``core.io.answers``)."""
        from core.io.answers import AnswerFormat

        return AnswerFormat.from_dict(self.manifest.get("answer_format"), f"{self.root / MANIFEST}: answer_format")

    def answer_settings(self) -> dict:
        """The analysis settings its answers need (``AnalysisConfig``'s ``template`` and ``answer_format``): the
        probe asks as its completions answer, and records without a label are read with its pattern. Checked:
        a bad ``answer_format`` is an InputError naming world.json."""
        return {"template": self.answer_format.template,
                "answer_format": dict(self.manifest.get("answer_format") or {})}

    @property
    def plugin(self):
        """The world's plug-in (``world.json``: ``"plugin": "NAME"``, an installed entry point; the contract is
        ``core.workspace.plugins.WorldPlugin``), or None: what only this world has (its own metrics, default
        learning rate, preference set); the demo worlds name one."""
        name = self.manifest.get("plugin")
        return None if name is None or name == "" else plugins.load_plugin(name, self.root / MANIFEST)

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
        return jsonsafe.loads(path.read_text(encoding="utf-8-sig"), str(path)) if path.is_file() else []

    def fingerprint(self) -> str:
        """Hash of the manifest and the weight files' sizes and mtimes: changes when the world changes."""
        h = hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode())
        outside = [f for d in [self.base_model_dir, *(c.path for c in self.checkpoints)]
                   if not d.resolve().is_relative_to(self.root) for f in d.glob("*.safetensors")]
        for f in sorted(self.root.rglob("*.safetensors")) + sorted(outside):  # a registered world's weights live outside
            st = f.stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    @property
    def checkpoints_arg(self) -> str | list[str]:
        """The series as ``load_series`` / ``AnalysisConfig.checkpoints`` take it: a folder or an ordered list."""
        value = _checkpoint_paths(self.root, self.manifest["checkpoints"])
        return [str(v) for v in value] if isinstance(value, list) else str(value)

    def summary(self) -> dict:
        config = self.base_model_dir / "config.json"
        cfg = jsonsafe.loads(config.read_text(encoding="utf-8-sig"), str(config))
        inner = cfg.get("text_config") or {}  # a vision-language config keeps these in its text_config
        text = {k: cfg.get(k) or inner.get(k) for k in ("num_hidden_layers", "hidden_size", "vocab_size")}
        graph = concepts.load_graph(self.graph_path)
        return {
            "name": self.name, "root": str(self.root), "description": self.manifest.get("description", ""),
            "model": {"architecture": (cfg.get("architectures") or [cfg.get("model_type", "?")])[0],
                      "parameters": count_parameters(self.base_model_dir), "layers": text.get("num_hidden_layers"),
                      "hidden_size": text.get("hidden_size"), "path": str(self.base_model_dir),
                      "vision": self.is_vl},  # its family reads images
            "tokenizer": {"vocab_size": text.get("vocab_size")},
            "checkpoints": [{"name": c.name, "step": c.step, "kind": c.kind,
                             "reward": c.training.get("reward"), "loss": c.metrics.get("loss"),
                             "objective": c.training.get("objective"), "lora_rank": c.training.get("lora_rank"),
                             "lr": c.training.get("lr")}
                            for c in self.checkpoints],
            "graph": {"nodes": graph.number_of_nodes(), "edges": graph.number_of_edges(),
                      "diseases": len(concepts.diseases(graph)), "findings": len(concepts.findings(graph))},
            "datasets": {k: v["records"] for k, v in self.manifest["datasets"].items()},
        }


def record_metrics(world: World, rows: list[dict]) -> Path:
    """Keep held-out figures per checkpoint (``core.perturb.evaluation``; one row each, with ``checkpoint`` and ``step``)
    as the world's ``metrics.json``, merged by checkpoint with what it holds: the Home page draws them over the
    steps and a CPO run's comparison takes its "before" row from them."""
    from core.io.cache import atomic_write_text

    path = world.root / world.manifest.get("metrics", "metrics.json")
    merged = {r["checkpoint"]: r for r in world.metrics()}
    merged.update({r["checkpoint"]: r for r in rows})
    atomic_write_text(path, json.dumps(sorted(merged.values(), key=lambda r: r.get("step", 0)), indent=1))
    return path


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


def load_world(root: str | Path) -> World:
    """Read and check a world folder; ``InputError`` names the first missing or malformed file."""
    if not str(root).strip():
        raise InputError("no world chosen: expected a world folder (one with a world.json)")
    root = expand(root).resolve()
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise InputError(f"{root}: world folder not found")
    if not manifest_path.is_file():
        raise InputError(f"{manifest_path}: missing world manifest (a world folder has a world.json; "
                         "`workbench world create` writes one, `workbench build-sample` rebuilds a sample world)")
    manifest = jsonsafe.loads(manifest_path.read_text(encoding="utf-8-sig"), str(manifest_path))
    for key in ("base_model", "checkpoints", "concept_graph", "datasets"):
        if key not in manifest:
            raise InputError(f"{manifest_path}: missing field '{key}'")
    if not isinstance(manifest["datasets"], dict) or not all(
            isinstance(d, dict) and isinstance(d.get("path"), str) and isinstance(d.get("records"), int)
            for d in manifest["datasets"].values()):
        raise InputError(f"{manifest_path}: field 'datasets' must map names to {{\"path\": str, \"records\": int}}")
    base = root / manifest["base_model"]
    expected = [base / "config.json", root / manifest["concept_graph"]]
    expected += [root / d["path"] for d in manifest["datasets"].values()]
    for path in expected:
        if not path.exists():
            raise InputError(f"{path}: missing file of world {root} (expected by {MANIFEST})")
    vocab = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
    if not any((base / f).is_file() for f in vocab):  # a fast tokenizer's tokenizer.json, or a slow one's vocabulary
        raise InputError(f"{base / 'tokenizer.json'}: missing file of world {root} (expected by {MANIFEST}; "
                         f"or the vocabulary of a slow tokenizer: {', '.join(vocab[1:])})")
    if not list(base.glob("*.safetensors")):
        raise InputError(f"{base}: no *.safetensors weights found")
    return World(root, manifest, checkpoints.resolve(_checkpoint_paths(root, manifest["checkpoints"])))


def _checkpoint_paths(root: Path, value) -> Path | list[Path]:
    """``checkpoints`` of a manifest: one folder, or an ordered list of folders (relative to the world)."""
    return [root / v for v in value] if isinstance(value, list) else root / value


WORLDS_DIR = "worlds"  # under the workspace: worlds registered with ``create_world``


def world_dir(workspace_root: str | Path, name: str) -> Path:
    """Where ``create_world`` keeps a world named ``name``: ``<workspace>/worlds/<name as a folder name>``."""
    import re

    folder = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.strip()).strip("-.") or "world"
    return Path(workspace_root) / WORLDS_DIR / folder


def known_worlds(workspace_root: str | Path | None = None, store=None) -> list[Path]:
    """For the world picker: the worlds installed packages provide (``plugins.provided_worlds``: the demo's
    sample worlds), the worlds under ``<workspace>/worlds/`` and those opened before (the workspace database's
    registry) that still have a manifest."""
    found = list(plugins.provided_worlds().values())
    if workspace_root:
        found += sorted(p.parent for p in (Path(workspace_root) / WORLDS_DIR).glob(f"*/{MANIFEST}"))
    if store is not None:
        found += [Path(r[0]) for r in store.query("SELECT path FROM worlds ORDER BY registered_at")]
    return list(dict.fromkeys(p.resolve() for p in found if (p / MANIFEST).is_file()))


def create_world(out: str | Path, name: str, base: str | Path, checkpoints: list[str | Path], data: list[str | Path],
                 graph: str | Path | None = None, held_out: str | Path | None = None,
                 description: str = "") -> World:
    """Register a researcher's own run as a world in the new folder ``out``: ``world.json`` names the base model,
    the checkpoint series (ordered; each a trainer output folder or a checkpoint), the trajectory files and the
    optional held-out set by their absolute paths (nothing of the user's is copied or moved), and a copy of the
    concept graph ``graph`` to edit (without one, an empty graph: the engine assumes no domain; the command line
    starts from the sample graph, the Checkpoints page from the open world's). Every file is read and checked
    first; ``out`` must not exist yet."""
    import shutil

    from core.io.trajectories import read_trajectories
    from core.models.checkpoints import check_model_dir, resolve
    from core.models.series import base_name_warnings

    out = Path(out).expanduser().resolve()
    if not name.strip():
        raise InputError("world name: expected a non-empty name")
    if out.exists():
        raise InputError(f"{out}: already exists; choose another world name (nothing is overwritten)")
    _check_family(Path(base).expanduser())  # the model_type first: an unsupported model is named as such
    base = check_model_dir(base).resolve()
    series = [Path(c).expanduser().resolve() for c in checkpoints]
    infos = resolve(series) if series else []
    if not data:
        raise InputError("data: expected at least one trajectory file")
    datasets = {}
    for path in (Path(d).expanduser().resolve() for d in data):
        key = _dataset_name(path.stem, datasets)
        datasets[key] = {"path": str(path), "records": len(read_trajectories(path))}
    evaluation = {}
    if held_out:
        path = Path(held_out).expanduser().resolve()
        labelled = [r for r in read_trajectories(path) if r.get("label")]
        if not labelled:
            raise InputError(f"{path}: held-out set without labels (expected a 'label' per record, or answers "
                             "its completions give)")
        datasets["held_out"] = {"path": str(path), "records": len(labelled)}
        evaluation = {"held_out": "held_out"}
    graph_path = Path(graph).expanduser().resolve() if graph else None
    if graph_path is not None:
        concepts.load_graph(graph_path)  # checked before anything is written
    manifest = {"name": name.strip(), "format_version": 1, "description": description or f"registered from {base}",
                "base_model": str(base), "checkpoints": [str(p) for p in series], "concept_graph": "concept_graph.json",
                "datasets": datasets, "default_dataset": next(iter(datasets)), "evaluation": evaluation,
                "notes": base_name_warnings(base, infos)}
    out.mkdir(parents=True)
    if graph_path is not None:
        shutil.copyfile(graph_path, out / "concept_graph.json")
    else:
        concepts.save_graph(nx.DiGraph(), out / "concept_graph.json")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return load_world(out)


def _check_family(base: Path) -> None:
    """A base whose model_type no family serves is refused at registration, by name (``UnsupportedModel``),
    not later at load."""
    from core.models.families import family_for  # imports torch: only registration pays for it

    family_for(base)


def _dataset_name(stem: str, taken: dict) -> str:
    name, i = stem, 2
    while name in taken or name == "held_out":
        name, i = f"{stem}-{i}", i + 1
    return name
