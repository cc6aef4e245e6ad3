"""One drift analysis of a checkpoint series on a trajectory set: the tables the workbench shows.

    cfg = AnalysisConfig(base="sample_data/model", checkpoints="sample_data/rft", data="sample_data/data/test.jsonl")
    result = run_analysis(cfg, cache_dir="~/.cot-drift-workbench/cache")   # cached by fingerprints
    result.save("out/")        # tokens.parquet beliefs.parquet effects.parquet ... + config.json
    result = Analysis.load("out/")

``AnalysisConfig.from_world("sample_data")`` fills in a world's base, checkpoints, test set and labels.
The command line runs the same: ``workbench score --base DIR --checkpoints DIR --data FILE --out DIR``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

from core import concepts, drift
from core.cache import cache_key, cached_frame, file_hash, swap_in_folder, write_parquet
from core.probe import POSITION_MODES, ProbeConfig, probe
from core.progress import Progress
from core.scoring import ScoreConfig, score
from core.series import ModelSeries, load_series, load_tokenizer, plan_series, series_fingerprint
from core.trajectories import encode, read_jsonl

PATH_FIELDS = ("base", "data", "checkpoints", "graph")
TABLES = ("tokens", "beliefs", "effects", "summary", "by_token", "by_concept", "by_context", "changes")


@dataclass
class AnalysisConfig:
    base: str  # base model folder
    data: str  # trajectories JSONL (prompt, completion, label)
    checkpoints: str | list[str] | None = None  # trainer output folder, or an ordered list of folders
    graph: str | None = None  # concept graph (node-link JSON): concept drivers, default labels
    labels: list[str] = field(default_factory=list)  # answer labels; default: graph diseases, else data labels
    template: str = ProbeConfig.template  # answer template appended at each probe position
    positions: str = "every"  # probe positions: every | sentence | end
    include_prompt: bool = True  # probe inside the prompt too (where the report's findings are read)
    top_k: int = 5
    batch_size: int = 8
    limit: int | None = None  # first N trajectories only
    device: str | None = None  # cuda | cpu | mps; default: auto
    dtype: str | None = None  # float32 | bfloat16 | float16; default: bf16 on CUDA
    base_names: list[str] = field(default_factory=list)  # other names of the base model in adapter configs
    trust_remote_code: bool = False
    tau: float = drift.TAU  # effect drift beyond which a position is detrimental / beneficial

    def __post_init__(self):
        if self.positions not in POSITION_MODES:
            raise ValueError(f"positions: expected one of {POSITION_MODES}, got {self.positions!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: expected a positive number, got {self.limit}")
        if not 0 < self.tau < 1:
            raise ValueError(f"tau: expected 0 < tau < 1, got {self.tau}")
        ScoreConfig(self.top_k, self.batch_size)  # validates those two

    @classmethod
    def from_world(cls, root: str | Path, dataset: str | None = None, **overrides) -> "AnalysisConfig":
        from core.world import load_world

        w = load_world(root)
        name = dataset or w.manifest.get("default_dataset", "test")
        return cls(base=str(w.base_model_dir), checkpoints=str(w.root / w.manifest["checkpoints"]),
                   data=str(w.dataset_path(name)), graph=str(w.graph_path),
                   base_names=[w.manifest.get("base_model_name", "")], **overrides)

    @classmethod
    def from_json(cls, data: dict) -> "AnalysisConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Analysis:
    config: AnalysisConfig
    tokens: pd.DataFrame  # one row per trajectory x checkpoint x completion token (scoring.score)
    beliefs: pd.DataFrame  # one row per trajectory x checkpoint x probe position (probe.probe)
    effects: pd.DataFrame  # drift.token_effects
    summary: pd.DataFrame  # drift.checkpoint_summary
    by_token: pd.DataFrame
    by_concept: pd.DataFrame
    by_context: pd.DataFrame  # drift.drift_by_context
    changes: pd.DataFrame  # drift.step_changes

    def save(self, out: str | Path, portable: bool = False) -> Path:
        """Write every table and config.json into a temporary sibling folder, then swap it in: a crash
        never leaves old and new tables mixed. ``portable`` writes the config's paths relative to ``out``
        (an analysis shipped inside a world folder); ``load`` resolves them against the folder again."""
        import os
        import shutil
        import tempfile

        out = Path(out).resolve()
        config = asdict(self.config)
        if portable:
            for key in PATH_FIELDS:
                value = config[key]
                if isinstance(value, list):
                    config[key] = [os.path.relpath(Path(v).resolve(), out) for v in value]
                elif value:
                    config[key] = os.path.relpath(Path(value).resolve(), out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            for name in TABLES:
                write_parquet(getattr(self, name), tmp / f"{name}.parquet")
            (tmp / "config.json").write_text(json.dumps(config, indent=1))
            swap_in_folder(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, out: str | Path) -> "Analysis":
        from core.errors import InputError

        out = Path(out)
        if not (out / "config.json").is_file():
            raise InputError(f"{out}: not an analysis folder (expected config.json and {TABLES[0]}.parquet)")
        try:
            data = json.loads((out / "config.json").read_text())
            for key in PATH_FIELDS:  # relative paths (a portable analysis) are relative to the folder
                value = data.get(key)
                if isinstance(value, list):
                    data[key] = [str((out / v).resolve()) for v in value]
                elif value:
                    data[key] = str((out / value).resolve())
            cfg = AnalysisConfig.from_json(data)
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise InputError(f"{out / 'config.json'}: not a valid analysis config ({e})") from None
        missing = [f"{n}.parquet" for n in TABLES if not (out / f"{n}.parquet").is_file()]
        if missing:
            raise InputError(f"{out}: incomplete analysis folder, missing {', '.join(missing)}")
        return cls(cfg, **{name: pd.read_parquet(out / f"{name}.parquet") for name in TABLES})


def resolve_labels(cfg: AnalysisConfig, records: list[dict]) -> tuple[list[str], object]:
    graph = concepts.load_graph(cfg.graph) if cfg.graph else None
    if cfg.labels:
        return list(cfg.labels), graph
    if graph is not None and concepts.diseases(graph):
        return concepts.diseases(graph), graph
    return sorted({r["label"] for r in records if r.get("label")}), graph


def run_analysis(cfg: AnalysisConfig, cache_dir: str | Path | None = None, progress: Progress | None = None,
                 should_cancel: Callable[[], bool] | None = None, series: ModelSeries | None = None) -> Analysis:
    """Score, probe and summarise; the two expensive tables are cached on disk by fingerprint."""
    records = read_jsonl(cfg.data, cfg.limit)
    labels, graph = resolve_labels(cfg, records)
    if series is None:  # loaded only if a table is not cached yet
        base, infos, device, dtype = plan_series(cfg.base, cfg.checkpoints, cfg.device, cfg.dtype)
        fingerprint = series_fingerprint(base, infos, dtype)
    else:
        fingerprint = series.fingerprint()
    loaded: list[ModelSeries] = [series] if series is not None else []

    def get_series() -> ModelSeries:
        if not loaded:
            loaded.append(load_series(cfg.base, cfg.checkpoints, device=cfg.device, dtype=cfg.dtype,
                                      trust_remote_code=cfg.trust_remote_code, base_names=cfg.base_names))
        return loaded[0]

    tokenizer = series.tokenizer if series is not None else load_tokenizer(cfg.base, cfg.trust_remote_code)
    encoded = encode(tokenizer, records)
    common = (fingerprint, file_hash(cfg.data), cfg.limit)

    def stage(name: str, share: tuple[float, float]) -> Progress | None:
        lo, hi = share
        return (lambda d, t, m: progress(lo + (hi - lo) * d / max(1, t), 1.0, f"{name}: {m}")) if progress else None

    tokens = cached_frame(cache_dir, "tokens", cache_key(*common, cfg.top_k),
                          lambda: score(get_series(), encoded, ScoreConfig(cfg.top_k, cfg.batch_size),
                                        stage("scoring", (0.0, 0.3)), should_cancel))
    pcfg = ProbeConfig(labels=labels, template=cfg.template, positions=cfg.positions, include_prompt=cfg.include_prompt)
    beliefs = cached_frame(cache_dir, "beliefs", cache_key(*common, asdict(pcfg)),
                           lambda: probe(get_series(), encoded, pcfg, stage("probe", (0.3, 1.0)), should_cancel))
    effects = drift.token_effects(beliefs, encoded, cfg.tau)
    by_concept = drift.drivers_by_concept(effects, encoded, graph, cfg.tau) if graph is not None else pd.DataFrame()
    if progress:
        progress(1.0, 1.0, "done")
    return Analysis(cfg, tokens, beliefs, effects, drift.checkpoint_summary(tokens, beliefs, effects),
                    drift.drivers_by_token(effects), by_concept, drift.drift_by_context(tokens),
                    drift.step_changes(beliefs))


@dataclass
class AnalysisInfo:
    path: Path
    name: str
    created: float  # when it was written (config.json's mtime)
    config: AnalysisConfig

    @property
    def stamp(self) -> str:
        """Changes whenever the folder is rewritten: part of the UI's cache keys."""
        return f"{self.path}:{self.created}"

    def describe(self) -> str:
        data = Path(self.config.data).name
        n = f"first {self.config.limit}" if self.config.limit else "all"
        return f"{self.name} · {n} of {data} · probe {self.config.positions}"


def list_analyses(*folders: str | Path | None) -> list[AnalysisInfo]:
    """Analysis folders found at or directly under ``folders``, newest first (unreadable ones skipped)."""
    seen, out = set(), []
    for folder in folders:
        if not folder:
            continue
        folder = Path(folder)
        candidates = [folder] if (folder / "config.json").is_file() else sorted(folder.glob("*/config.json"))
        for c in candidates:
            path = (c if c.is_dir() else c.parent).resolve()
            if path in seen or path.name.startswith("."):
                continue
            seen.add(path)
            try:
                data = json.loads((path / "config.json").read_text())
                cfg = AnalysisConfig.from_json(data)
            except (OSError, json.JSONDecodeError, TypeError, ValueError):
                continue
            out.append(AnalysisInfo(path, path.name, (path / "config.json").stat().st_mtime, cfg))
    return sorted(out, key=lambda a: a.created, reverse=True)


def score_argv(cfg: AnalysisConfig, out: str | Path, workspace: str | Path | None = None) -> list[str]:
    """The ``workbench score`` arguments (after ``python``) that compute ``cfg`` into ``out``: what the
    Checkpoints page shows before it runs them as a background job."""
    argv = _series_argv("score", cfg)
    defaults = AnalysisConfig(base=cfg.base, data=cfg.data)
    for key in ("positions", "top_k", "batch_size"):
        value = getattr(cfg, key)
        if value is not None and value != getattr(defaults, key):
            argv += [f"--{key.replace('_', '-')}", str(value)]
    if not cfg.include_prompt:
        argv.append("--cot-only")
    if workspace:
        argv += ["--workspace", str(workspace)]
    return [*argv, "--out", str(out)]


def _series_argv(command: str, cfg: AnalysisConfig) -> list[str]:
    argv = ["-m", "workbench.cli", command, "--base", cfg.base, "--data", cfg.data]
    if cfg.checkpoints:
        argv += ["--checkpoints", *([cfg.checkpoints] if isinstance(cfg.checkpoints, str) else cfg.checkpoints)]
    if cfg.graph:
        argv += ["--graph", cfg.graph]
    argv += [a for name in cfg.base_names if name for a in ("--base-name", name)]
    for key in ("limit", "device", "dtype"):
        if getattr(cfg, key) is not None:
            argv += [f"--{key}", str(getattr(cfg, key))]
    return argv


def perturb_argv(cfg: AnalysisConfig, find: str, replace: str, mode: str, out: str | Path) -> list[str]:
    """The ``workbench perturb`` arguments that swap ``find`` for ``replace`` over ``cfg``'s series and data."""
    return [*_series_argv("perturb", cfg), "--find", find, "--replace", replace, "--mode", mode, "--out", str(out)]


def shell_command(argv: list[str]) -> str:
    """``argv`` as a line to paste into a shell (``workbench`` for ``python -m workbench.cli``)."""
    import shlex

    args = argv[2:] if argv[:2] == ["-m", "workbench.cli"] else argv
    return "workbench " + " ".join(shlex.quote(str(a)) for a in args)
