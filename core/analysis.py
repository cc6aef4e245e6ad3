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
from core.scoring import Progress, ScoreConfig, score
from core.series import ModelSeries, load_series, load_tokenizer, plan_series, series_fingerprint
from core.trajectories import encode, read_jsonl

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

    def save(self, out: str | Path) -> Path:
        """Write every table and config.json into a temporary sibling folder, then swap it in: a crash
        never leaves old and new tables mixed."""
        import shutil
        import tempfile

        out = Path(out).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            for name in TABLES:
                write_parquet(getattr(self, name), tmp / f"{name}.parquet")
            (tmp / "config.json").write_text(json.dumps(asdict(self.config), indent=1))
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
            cfg = AnalysisConfig.from_json(json.loads((out / "config.json").read_text()))
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
