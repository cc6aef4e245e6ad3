"""One drift analysis of a checkpoint series on a trajectory set: the tables the workbench shows.

    cfg = AnalysisConfig(base="sample_data/model", checkpoints="sample_data/rft", data="sample_data/data/test.jsonl")
    result = run_analysis(cfg, cache_dir="~/.cot-drift-workbench/cache")   # cached by fingerprints
    result.save("out/")        # tokens.parquet beliefs.parquet effects.parquet ... + config.json
    result = Analysis.load("out/")

``AnalysisConfig`` (``core.drift.config``, imported here too) says what to analyse; ``AnalysisConfig.from_world(
"sample_data")`` fills in a world's base, checkpoints, test set and labels. The command line runs the same:
``workbench score --base DIR --checkpoints DIR --data FILE --out DIR``, or ``workbench score --config
analysis.json --out DIR``; a background job runs ``python -m core.jobs.worker score --config <job>/config.json``
(``core.jobs.registry.launch(ws, "score", cfg, ScoreOptions(out=...))``, the body in ``core.drift.job``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.drift import findings as drift
from core.drift import parts
from core.drift.context_check import context_warnings
from core.drift.config import AnalysisConfig, load_folder_config
from core.drift.probe import NO_LABELS, ProbeConfig, empty_beliefs
from core.drift.scoring import ScoreConfig
from core.errors import InputError
from core.graph import concepts
from core.io.cache import (
    SortedByTrajectory,
    cache_key,
    swap_in_folder,
    write_parquet,
)
from core.io.outputs import ANALYSIS_TABLES, MANIFEST, write_manifest
from core.io.paths import expand
from core.io.trajectories import data_hash, read_jsonl
from core.models.branches import series_parents
from core.models.families import family_for
from core.models.series import (
    ModelSeries,
    branch_starts,
    load_series,
    plan_series,
)
from core.progress import Progress

if TYPE_CHECKING:
    import pyarrow as pa

TABLES = ANALYSIS_TABLES
PER_TRAJECTORY = ("tokens", "beliefs", "effects")  # stored sorted by trajectory, read one trajectory at a time
SUMMARY_TABLES = tuple(t for t in TABLES if t not in PER_TRAJECTORY)
TEXTS = "trajectories.jsonl"  # the records scored, so that the folder is self-contained
LAZY_COLUMNS = ("top_tokens", "top_probs")  # the tokens table's top-k lists: read for the cells shown only
ROW_GROUP = 8_192  # rows per parquet row group: a trajectory filter decodes few of them


@dataclass
class Analysis:
    config: AnalysisConfig
    tokens: pd.DataFrame  # one row per trajectory x checkpoint x completion token (scoring.score)
    beliefs: pd.DataFrame  # one row per trajectory x checkpoint x probe position (probe.probe)
    effects: pd.DataFrame  # drift.token_effects
    summary: pd.DataFrame  # per checkpoint (drift.DriftParts: accuracy, final belief, KLs, detrimental share)
    by_token: pd.DataFrame
    by_concept: pd.DataFrame
    by_context: pd.DataFrame  # the next-token drift by the tokens read just before
    changes: pd.DataFrame  # drift.step_changes
    records: list[dict] = field(default_factory=list)  # the trajectories scored (kept in the folder)

    @property
    def probed(self) -> bool:
        """False for an analysis scored without the probe (``core.drift.probe.NO_LABELS``): token drift only."""
        return not self.beliefs.empty

    def save(self, out: str | Path, portable: bool = False) -> Path:
        """Write every table and config.json into a temporary sibling folder, then swap it in: a crash
        never leaves old and new tables mixed. ``portable`` writes the config's paths relative to ``out``
        (an analysis shipped inside a world folder); ``load`` resolves them against the folder again."""
        images_at = expand(out).resolve() if portable else None
        return _save_folder(self.config, out, portable, lambda tmp: self._write_tables(
            tmp, _portable_images(self.records, images_at) if portable else self.records))

    def _write_tables(self, folder: Path, records: list[dict]) -> None:
        """Every table; the per-trajectory ones sorted by trajectory in row groups, so that a page reads one
        trajectory's rows by filter; the explorer's trajectory ranking and the texts, so that it never
        reads the whole tables nor the source file."""
        from core.drift import explore

        for name in TABLES:
            df = getattr(self, name)
            if name in PER_TRAJECTORY and "traj_id" in df:
                df = df.sort_values("traj_id", kind="stable")
            write_parquet(df, folder / f"{name}.parquet", row_group_size=ROW_GROUP)
        if records:
            with open(folder / TEXTS, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not self.beliefs.empty or self.records:
            write_parquet(explore.trajectory_table(self.beliefs, self.effects, self.records or None),
                          folder / "trajectories.parquet")
        if not self.beliefs.empty:
            cat = drift.category_accuracy(self.beliefs)
            write_parquet(cat.reset_index() if not cat.empty else pd.DataFrame({"gold": []}), folder / "by_category.parquet")

    @classmethod
    def load(cls, out: str | Path) -> "Analysis":
        out = expand(out)
        cfg = load_folder_config(out)
        missing = [f"{n}.parquet" for n in TABLES if not (out / f"{n}.parquet").is_file()]
        if missing:
            raise InputError(f"{out}: incomplete analysis folder, missing {', '.join(missing)}")
        records = read_jsonl(out / TEXTS, fmt=cfg.answers, check_images=False) if (out / TEXTS).is_file() else []
        return cls(cfg, **{name: pd.read_parquet(out / f"{name}.parquet") for name in TABLES}, records=records)


def _save_folder(config: AnalysisConfig, out: str | Path, portable: bool, write: Callable[[Path], None]) -> Path:
    """``write(folder)`` the tables and config.json into a temporary sibling of ``out``, then swap it in (also
    ``save_folder``: the drift watch writes its growing analysis folder through it)."""
    import os
    import tempfile

    out = expand(out).resolve()
    data = config.to_dict()
    if portable:
        for key in config.path_fields():
            value = data[key]
            if isinstance(value, list):
                data[key] = [os.path.relpath(Path(v).resolve(), out) for v in value]
            elif value:
                data[key] = os.path.relpath(Path(value).resolve(), out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        (tmp / "config.json").write_text(json.dumps(data, indent=1) + "\n")
        write_manifest(tmp)  # what --force may replace later: these files, unchanged
        swap_in_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


save_folder = _save_folder  # the public name (core.watch.store)


class StagedAnalysis:
    """``run_analysis``'s result: every table already written, part by part, into a temporary analysis folder,
    so that no per-trajectory table was ever whole in memory. The attributes of ``Analysis``: the summary
    tables in memory; ``tokens``, ``beliefs`` and ``effects`` read from the folder when asked for (whole:
    for small analyses, scripts and tests). ``save`` links the written files into the analysis folder.
    The temporary folder goes when the object does."""

    def __init__(self, folder: Path, config: AnalysisConfig, records: list[dict], tables: dict[str, pd.DataFrame],
                 staging: Path):
        import weakref

        self.folder, self.config, self.records = folder, config, records
        for name in SUMMARY_TABLES:
            setattr(self, name, tables[name])
        self._cleanup = weakref.finalize(self, shutil.rmtree, staging, True)

    tokens = property(lambda self: self._read("tokens"))
    beliefs = property(lambda self: self._read("beliefs"))
    effects = property(lambda self: self._read("effects"))

    def _read(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.folder / f"{name}.parquet")

    @property
    def probed(self) -> bool:
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.folder / "beliefs.parquet").metadata.num_rows > 0

    def save(self, out: str | Path, portable: bool = False) -> Path:
        """As ``Analysis.save``; the tables are hard-linked (copied across file systems), not rewritten (a
        portable save writes the texts again, their image paths relative to the folder)."""
        images_at = expand(out).resolve() if portable else None
        return _save_folder(self.config, out, portable, lambda tmp: self._link(
            tmp, _portable_images(self.records, images_at) if portable and self.records else None))

    def _link(self, tmp: Path, records: list[dict] | None) -> None:
        import os

        for f in self.folder.iterdir():
            if f.name == MANIFEST:  # written anew for the new folder
                continue
            if records is not None and f.name == TEXTS:
                with open(tmp / TEXTS, "w", encoding="utf-8") as out:
                    out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                continue
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)


def _portable_images(records: list[dict], out: Path) -> list[dict]:
    """The records with their image paths relative to the folder (``read_jsonl`` resolves them against it
    again): a portable analysis shipped inside a world still shows its images once the world is moved."""
    import os

    return [{**r, "images": [os.path.relpath(Path(p).resolve(), out) for p in r["images"]]} if r.get("images") else r
            for r in records]


@dataclass
class AnalysisView:
    """An analysis folder read for display: the config and the summary tables at once (small whatever the
    analysis's size), one trajectory's rows on demand (a parquet filter on the trajectory-sorted tables).

        view = AnalysisView.open("out/")
        view.rows("tokens", "test-00012")      # that trajectory's token rows only
    """
    path: Path
    config: AnalysisConfig
    summary: pd.DataFrame
    by_token: pd.DataFrame
    by_concept: pd.DataFrame
    by_context: pd.DataFrame
    changes: pd.DataFrame

    @classmethod
    def open(cls, out: str | Path) -> AnalysisView:
        out = Path(out)
        cfg = load_folder_config(out)
        missing = [f"{n}.parquet" for n in TABLES if not (out / f"{n}.parquet").is_file()]
        if missing:
            raise InputError(f"{out}: incomplete analysis folder, missing {', '.join(missing)}")
        return cls(out, cfg, **{n: pd.read_parquet(out / f"{n}.parquet") for n in SUMMARY_TABLES})

    @property
    def probed(self) -> bool:
        """False for an analysis scored without the probe (no answer labels): its beliefs table has no rows."""
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.path / "beliefs.parquet").metadata.num_rows > 0

    def rows(self, table: str, traj_id: str, columns: list[str] | None = None,
             positions: tuple[int, int] | None = None, top_k: bool = False) -> pd.DataFrame:
        """One trajectory's rows of a per-trajectory table (``tokens``, ``beliefs``, ``effects``); with
        ``positions`` (first, last) only those positions' rows. The top-k list columns (``LAZY_COLUMNS``,
        most of the tokens table's bytes) are read only when asked for: ``top_k=True`` or named in ``columns``."""
        if table not in PER_TRAJECTORY:
            raise ValueError(f"table: expected one of {PER_TRAJECTORY}, got {table!r}")
        import pyarrow.parquet as pq

        path = self.path / f"{table}.parquet"
        if columns is None and not top_k:
            columns = [c for c in pq.ParquetFile(path).schema_arrow.names if c not in LAZY_COLUMNS]
        filters = [("traj_id", "==", traj_id)]
        if positions is not None:
            filters += [("position", ">=", positions[0]), ("position", "<=", positions[1])]
        return pd.read_parquet(path, columns=columns, filters=filters).reset_index(drop=True)

    def table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        return pd.read_parquet(self.path / f"{name}.parquet", columns=columns)

    def checkpoint_rows(self, table: str, checkpoints: list[str], columns: list[str] | None = None) -> pd.DataFrame:
        """The rows of a per-trajectory table under ``checkpoints`` only (e.g. a CPO run and its start)."""
        if table not in PER_TRAJECTORY:
            raise ValueError(f"table: expected one of {PER_TRAJECTORY}, got {table!r}")
        return pd.read_parquet(self.path / f"{table}.parquet", columns=columns,
                               filters=[("checkpoint", "in", list(checkpoints))]).reset_index(drop=True)

    def trajectories(self) -> pd.DataFrame:
        """The explorer's ranking (stored at save; computed from beliefs and effects for older folders)."""
        from core.drift import explore

        if (self.path / "trajectories.parquet").is_file():
            return self.table("trajectories")
        return explore.trajectory_table(self.table("beliefs"), self.table("effects"), self.records())

    def category_accuracy(self) -> pd.DataFrame:
        if (self.path / "by_category.parquet").is_file():
            return self.table("by_category").set_index("gold")
        return drift.category_accuracy(self.table("beliefs"))

    def records(self) -> list[dict]:
        """The trajectories scored: the copy in the folder (older folders: the source file, if still there)."""
        if (self.path / TEXTS).is_file():
            # a moved image is warned about where shown
            return read_jsonl(self.path / TEXTS, fmt=self.config.answers, check_images=False)
        return read_jsonl(self.config.data, self.config.limit, fmt=self.config.answers, check_images=False)

    def images(self, traj_id: str) -> list[str]:
        """The image paths of one trajectory (empty for text-only ones): ``core.drift.explore.images_of``."""
        from core.drift import explore

        return explore.images_of(self.records(), traj_id)


def resolve_labels(cfg: AnalysisConfig, records: list[dict]) -> tuple[list[str], object]:
    graph = concepts.load_graph(cfg.graph) if cfg.graph else None
    if cfg.labels:
        return list(cfg.labels), graph
    if graph is not None and concepts.diseases(graph):
        return concepts.diseases(graph), graph
    return sorted({r["label"] for r in records if r.get("label")}), graph


def run_analysis(cfg: AnalysisConfig, cache_dir: str | Path | None = None, progress: Progress | None = None,
                 should_cancel: Callable[[], bool] | None = None, series: ModelSeries | None = None) -> StagedAnalysis:
    """Score, probe and summarise; the two expensive tables are cached on disk in parts per checkpoint (``parts``:
    a checkpoint added to a scored series is computed alone), and the drift tables computed part by part
    (``assemble_parts``): host memory does not grow with the trajectories."""
    progress = parts.Remembered(progress)  # says what it is doing (reading, loading) at the fraction reached so far
    if progress:
        progress(0.0, 1.0, f"reading the trajectories of {Path(cfg.data).name}")
    records = read_jsonl(cfg.data, cfg.limit, fmt=cfg.answers)  # unlabelled records: the answer they give
    labels, graph = resolve_labels(cfg, records)
    if series is None:  # loaded only if a table is not cached yet
        base, infos, device, dtype = plan_series(cfg.base, cfg.checkpoints, cfg.device, cfg.dtype)
    else:
        base, infos, dtype = series.base_dir, series.checkpoints, series.dtype
    starts = branch_starts(infos)  # CPO runs: measured from their start
    loaded: list[ModelSeries] = [series] if series is not None else []

    def get_series() -> ModelSeries:
        if not loaded:
            if progress:
                progress(progress.done, 1.0, f"loading the model: {Path(cfg.base).name} and {len(infos)} checkpoints")
            loaded.append(load_series(cfg.base, cfg.checkpoints, device=cfg.device, dtype=cfg.dtype,
                                      trust_remote_code=cfg.trust_remote_code, base_names=cfg.base_names,
                                      vision=cfg.vision))
        return loaded[0]

    family = series.family if series is not None else family_for(cfg.base)  # an unsupported model: refused here
    if progress:
        progress(0.0, 1.0, f"encoding {len(records)} trajectories")
    encoded = encode_records(cfg, records, series)
    for message in context_warnings(encoded, cfg.base):  # longer than the context: said, per trajectory
        if progress:
            progress(0.0, 1.0, f"warning: {message}")
    common = (data_hash(cfg.data), cfg.limit) + (() if cfg.chat_template else ("no chat template",))
    common += family.inputs_key(encoded)  # images: their content and the processor's settings (text: nothing)
    # where each CoT ends (in_think, the probe's positions) and each record's gold answer (read with the config's
    # answer format): a table cached when "</think>" in pieces was missed (the CoT ran to the end of the
    # completion), or with answers read another way, is not this one
    common += (cache_key([(e.think_end - e.start, e.label) for e in encoded]),)
    marks = parts.checkpoint_marks(base, infos, dtype)

    def stage(name: str, share: tuple[float, float]) -> Progress | None:
        lo, hi = share
        return (lambda d, t, m: progress(lo + (hi - lo) * d / max(1, t), 1.0, f"{name}: {m}")) if progress else None

    scfg = ScoreConfig(cfg.top_k, _batch_size(cfg, encoded, series, progress))
    parents = series_parents(list(marks), starts)
    staging = _staging(cache_dir)  # the tables are written here part by part, never whole in memory
    try:
        tokens = parts.scores(get_series, encoded, scfg, cache_dir, parts.token_keys(marks, parents, *common, cfg.top_k),
                              parents, stage("scoring", (0.0, 0.3)), should_cancel, staging)
        pcfg = ProbeConfig(labels=labels, template=cfg.template, positions=cfg.positions,
                           include_prompt=cfg.include_prompt)
        if labels:
            beliefs = parts.beliefs(get_series, encoded, pcfg, cache_dir,
                                    {n: cache_key(*common, asdict(pcfg), mark) for n, mark in marks.items()},
                                    stage("probe", (0.3, 1.0)), should_cancel, staging)
        else:  # nothing names an answer: the token drift is still worth seeing
            beliefs = []
            if progress:
                progress(0.3, 1.0, f"warning: {NO_LABELS}")
        result = assemble_parts(cfg, records, encoded, graph, tokens, beliefs, starts, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if progress:
        progress(1.0, 1.0, "done")
    return result


def encode_records(cfg: AnalysisConfig, records: list[dict], series: ModelSeries | None = None) -> list:
    """The records as the series reads them (its family's ``encode``: a text base through its tokenizer, a
    vision-language base with their images through its processor, pixel limits from ``cfg``), each image named
    by the data file and the trajectory when it cannot be read. Without ``series``, only the processor loads."""
    if series is not None:
        return series.encode(records, cfg.chat_template, where=str(cfg.data))
    family = family_for(cfg.base)
    processor = family.load_processor(cfg.base, cfg.vision, cfg.trust_remote_code)
    return family.encode(processor, records, cfg.chat_template, where=str(cfg.data))


def _staging(cache_dir: str | Path | None) -> Path:
    """A new temporary folder for one run's parts and tables: in the cache (beside the parts, on the same disk)
    when there is one, else in the system's temporary folder."""
    import tempfile

    root = expand(cache_dir) / ".staging" if cache_dir is not None else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="analysis-", dir=root))


def assemble_parts(cfg: AnalysisConfig, records: list[dict], encoded, graph, token_parts: Iterable[Path | pa.Table],
                   belief_parts: Iterable[Path | pa.Table], starts: dict[str, str] | None,
                   staging: Path) -> StagedAnalysis:
    """The drift tables computed from the scoring and probe parts one part at a time
    (``drift.DriftParts``) and written into ``staging``/analysis, the per-trajectory ones sorted by trajectory in
    ROW_GROUP-row groups (``cache.SortedByTrajectory``), as ``Analysis.save`` writes them. Host memory: one part,
    one sort bucket and the drift tables' partial sums, whatever the number of trajectories. A part: a parquet
    file or a table (a slice of a shard's table, core.drift.shards), read once, in the order given; each holds whole
    trajectories, every checkpoint of them; a part file inside ``staging`` is deleted once read."""
    folder = staging / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    acc = drift.DriftParts(graph, cfg.tau)
    ids = [e.id for e in encoded]
    out = {name: SortedByTrajectory(folder / f"{name}.parquet", ids, staging / "sort", row_group=ROW_GROUP)
           for name in PER_TRAJECTORY}
    for path in token_parts:
        table = _read_part(path, staging)
        out["tokens"].add(table)
        acc.add_tokens(_drift_columns(table))
    by_id = {e.id: e for e in encoded}
    empty_effects = None
    for path in belief_parts:
        part = _checkpoint_major(_read_part(path, staging).to_pandas())
        out["beliefs"].add(part)
        effects = acc.add_beliefs(part, [by_id[t] for t in pd.unique(part["traj_id"])])
        out["effects"].add(effects)
        empty_effects = effects.head(0) if empty_effects is None else empty_effects
    if empty_effects is None:  # no beliefs: the empty tables' columns
        empty_effects = acc.add_beliefs(empty_beliefs(), encoded)
    out["tokens"].finish(empty=pd.DataFrame())
    out["beliefs"].finish(empty=empty_beliefs())
    out["effects"].finish(empty=empty_effects)
    tables = acc.tables(starts)
    for name in SUMMARY_TABLES:
        write_parquet(tables[name], folder / f"{name}.parquet", row_group_size=ROW_GROUP)
    _write_extras(folder, records, acc)
    return StagedAnalysis(folder, cfg, records, tables, staging)


def _read_part(part: Path | list[Path] | pa.Table, staging: Path) -> pa.Table:
    """A part as a table (a list of files: one per checkpoint, concatenated in order); a part file of a run
    without a cache (written into ``staging``) goes once read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(part, pa.Table):
        return part
    if isinstance(part, (list, tuple)):
        return pa.concat_tables([_read_part(p, staging) for p in part], promote_options="default")
    table = pq.read_table(part)
    if part.is_relative_to(staging):
        part.unlink(missing_ok=True)
    return table


def _drift_columns(table) -> pd.DataFrame:
    """The columns of a token part the drift tables read, with each row's top-1 alternative taken from the
    top-k lists column-wise (the lists themselves, most of the part's bytes, never become Python objects)."""
    import pyarrow.compute as pc

    names = ["traj_id", "checkpoint", "step", "position", "token", "in_think", "logprob", *drift.SUMMARY_KL]
    df = table.select(names).to_pandas()
    if "top_tokens" in table.column_names:
        lists = table["top_tokens"]
        if table.num_rows and pc.min(pc.list_value_length(lists)).as_py() > 0:
            df["top1"] = pc.list_element(lists, 0).to_pandas().to_numpy(dtype=object)
        else:
            df["top1"] = [x[0] if x else "" for x in lists.to_pylist()]
    return df


def _write_extras(folder: Path, records: list[dict], acc: drift.DriftParts) -> None:
    """What ``Analysis._write_tables`` writes beside the tables: the texts, the explorer's trajectory ranking
    and the per-category accuracy, from the final beliefs and per-trajectory counts (never the whole tables)."""
    from core.drift import explore

    fin = acc.final()
    if records:
        with open(folder / TEXTS, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if not fin.empty or records:
        no_effects = pd.DataFrame({"traj_id": pd.Series(dtype=object), "direction": pd.Series(dtype=object)})
        table = explore.trajectory_table(fin, no_effects, records or None)
        if not fin.empty:  # the effect counts, summed part by part
            counts = acc.counts()
            for column, key in (("detrimental", "det"), ("beneficial", "ben")):
                table[column] = table["traj_id"].map(counts[key]).fillna(0).astype(int)
        write_parquet(table, folder / "trajectories.parquet")
    if not fin.empty:
        cat = drift.category_accuracy(fin)
        write_parquet(cat.reset_index() if not cat.empty else pd.DataFrame({"gold": []}), folder / "by_category.parquet")


def _batch_size(cfg: AnalysisConfig, encoded, series: ModelSeries | None, progress: Progress | None) -> int:
    """The config's batch size, or the most that fit the device (core.models.fit); refuses, before any model is loaded,
    a run that would not fit one trajectory at a time (fit.DoesNotFit, an InputError naming what to change)."""
    from core.models import fit

    if not encoded:
        return cfg.batch_size or 1
    if series is not None:
        plan = fit.plan_for_series(series, encoded, cfg.top_k, cfg.batch_size)
    else:
        base, infos, device, dtype = plan_series(cfg.base, cfg.checkpoints, cfg.device, cfg.dtype)
        plan = fit.plan_for_paths(base, infos, device, dtype, encoded, cfg.top_k, cfg.batch_size, cfg.trust_remote_code)
    if progress:
        progress(0.0, 1.0, f"warning: {plan.note}" if plan.note else f"scoring {plan.batch_size} trajectories per pass")
    return plan.batch_size


def _checkpoint_major(df: pd.DataFrame) -> pd.DataFrame:
    """Parts concatenated (each checkpoint-major in series order) -> the whole table checkpoint-major."""
    order = {c: i for i, c in enumerate(pd.unique(df["checkpoint"]))}
    return df.iloc[np.argsort(df["checkpoint"].map(order).to_numpy(), kind="stable")].reset_index(drop=True)


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
        name = f"{self.path.parent.name}/{self.name}" if self.name == "analysis" else self.name  # a world's, a watch's
        return f"{name} · {n} of {data} · probe {self.config.positions}"


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
                cfg = load_folder_config(path)
            except InputError:
                continue
            out.append(AnalysisInfo(path, path.name, (path / "config.json").stat().st_mtime, cfg))
    return sorted(out, key=lambda a: a.created, reverse=True)


def of_world(found: list[AnalysisInfo], world, recorded: set[str] | list[str] = ()) -> list[AnalysisInfo]:
    """The analyses of ``found`` that belong to ``world`` (a ``World``): its shipped one, those a scoring job of
    that world wrote (``recorded``: their folders, from the jobs' ``meta``), and those that scored one of its
    datasets with its base model (an analysis made on the command line). Another world's stays out."""
    from core.io.paths import expand

    def resolved(p) -> str:
        return str(expand(p).resolve()) if p else ""

    shipped = resolved(world.analysis_dir) if world.analysis_dir else ""
    datasets = {resolved(world.dataset_path(n)) for n in world.manifest["datasets"]}
    outs, base = {resolved(p) for p in recorded}, resolved(world.base_model_dir)
    return [a for a in found if str(a.path) in outs | {shipped}
            or (resolved(a.config.base) == base and resolved(a.config.data) in datasets)]
