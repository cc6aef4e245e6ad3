"""The watch's record on disk: each scored step's tables, kept step by step, and the analysis built from them.

``OUT/steps/<checkpoint>/`` holds one step: its rows of the scoring, probe and effects tables, its rows of the
drift tables (``tables/``: computed from the base and this step alone, which is all a checkpoint's rows of them
depend on) and ``step.json`` (written last: a step without it was never finished and is scored again). The base's
rows sit in ``steps/base/``. ``OUT/analysis/`` is an ordinary analysis folder (``core.drift.analysis``), rebuilt
from the steps by concatenation and an on-disk sort, never by recomputing a finished step: the Drift explorer
opens it while the run runs. Each rebuild is linear in the steps stored.

    store = StepStore(out)
    store.write(result, probe_set)          # one step (StepResult): tables, then step.json
    store.assemble(probe_set, config)       # OUT/analysis/, openable by the explorer
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from core.drift import findings as drift
from core.drift.findings import BASE
from core.io.cache import SortedByTrajectory, atomic_write_text, write_parquet

ROW_GROUP = 8_192  # core.drift.analysis.ROW_GROUP (not imported here: it brings torch, and the page reads steps)
TEXTS = "trajectories.jsonl"  # core.drift.analysis.TEXTS
STEPS = "steps"
ANALYSIS = "analysis"
STEP_FILE = "step.json"
PER_TRAJECTORY = ("tokens", "beliefs", "effects")
DRIFT_TABLES = ("summary", "by_token", "by_concept", "by_context")
SORT = {"summary": (["step"], [True]), "by_token": (["step", "total_effect_drift"], [True, True]),
        "by_concept": (["step", "mean_effect_drift"], [True, True]),
        "by_context": (["step", "mean_kl_base"], [True, False])}  # as core.drift.findings sorts the whole tables


class StepStore:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.steps_dir = self.out / STEPS
        self.analysis_dir = self.out / ANALYSIS

    def scored(self) -> list[dict]:
        """Every finished step's ``step.json`` (checkpoint, step, answers, seconds...), by step."""
        found = []
        for f in self.steps_dir.glob(f"*/{STEP_FILE}"):
            try:
                info = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if f.parent.name != BASE and not f.parent.name.startswith("."):  # ".name.xyz": a step being written
                found.append(info)
        return sorted(found, key=lambda s: (s["step"], s["checkpoint"]))

    def clean(self) -> None:
        """Remove steps a killed scorer left half-written (their temporary ``.name.xyz`` folders)."""
        for tmp in self.steps_dir.glob(".*"):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)

    def has_base(self) -> bool:
        return (self.steps_dir / BASE / STEP_FILE).is_file()

    def write(self, result, probe_set, seconds: float = 0.0, source: str = "") -> dict:
        """Store one step (a ``core.watch.steps.StepResult``); the base's rows too when it carries them."""
        base_tokens = result.tokens[result.tokens["checkpoint"] == BASE]
        base_beliefs = result.beliefs[result.beliefs["checkpoint"] == BASE]
        if len(base_tokens):
            self._write_part(BASE, base_tokens, base_beliefs, {"checkpoint": BASE, "step": 0})
        base = self._base()
        tokens = result.tokens[result.tokens["checkpoint"] == result.checkpoint]
        beliefs = result.beliefs[result.beliefs["checkpoint"] == result.checkpoint]
        acc = drift.DriftParts(probe_set.graph, probe_set.config.tau)
        acc.add_tokens(pd.concat([base["tokens"], tokens], ignore_index=True))
        both = pd.concat([base["beliefs"], beliefs], ignore_index=True)
        effects = acc.add_beliefs(both, probe_set.encoded)
        tables = acc.tables()
        info = {"checkpoint": result.checkpoint, "step": result.step, "answers": result.answers,
                "seconds": round(seconds, 3), "scored_at": time.time(), "source": source}
        extra = {name: _rows_of(tables[name], result.checkpoint) for name in DRIFT_TABLES}
        final = acc.final()
        extra["final"] = final[final["checkpoint"] == result.checkpoint] if len(final) else final
        counts = acc.counts()
        extra["counts"] = counts.rename_axis("traj_id").reset_index() if len(counts) else pd.DataFrame(
            {"traj_id": pd.Series(dtype=object), "det": pd.Series(dtype="int64"), "ben": pd.Series(dtype="int64")})
        if not self._has_base_effects():  # with the first step (or the first after a crash that lost them)
            self._write_table(BASE, "effects", effects[effects["checkpoint"] == BASE] if len(effects) else effects)
        own = effects[effects["checkpoint"] == result.checkpoint] if len(effects) else effects
        self._write_part(result.checkpoint, tokens, beliefs, info, effects=own, tables=extra)
        return info

    # ---- parts
    def _write_part(self, name: str, tokens: pd.DataFrame, beliefs: pd.DataFrame, info: dict,
                    effects: pd.DataFrame | None = None, tables: dict | None = None) -> None:
        """A step's folder, written beside and renamed into place (with ``step.json`` inside: finished)."""
        dest = self.steps_dir / name
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self._mkdirs()))
        try:
            write_parquet(tokens.reset_index(drop=True), tmp / "tokens.parquet", row_group_size=ROW_GROUP)
            write_parquet(beliefs.reset_index(drop=True), tmp / "beliefs.parquet", row_group_size=ROW_GROUP)
            if effects is not None:
                write_parquet(effects.reset_index(drop=True), tmp / "effects.parquet", row_group_size=ROW_GROUP)
            for key, df in (tables or {}).items():
                (tmp / "tables").mkdir(exist_ok=True)
                write_parquet(df.reset_index(drop=True), tmp / "tables" / f"{key}.parquet")
            atomic_write_text(tmp / STEP_FILE, json.dumps(info, indent=1))
            shutil.rmtree(dest, ignore_errors=True)  # an unfinished earlier try (no step.json)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write_table(self, name: str, table: str, df: pd.DataFrame) -> None:
        write_parquet(df.reset_index(drop=True), self.steps_dir / name / f"{table}.parquet", row_group_size=ROW_GROUP)

    def _has_base_effects(self) -> bool:
        return (self.steps_dir / BASE / "effects.parquet").is_file()

    def _mkdirs(self) -> Path:
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        return self.steps_dir

    def _base(self) -> dict:
        folder = self.steps_dir / BASE
        return {"name": BASE, "tokens": pd.read_parquet(folder / "tokens.parquet"),
                "beliefs": pd.read_parquet(folder / "beliefs.parquet")}

    def table(self, name: str) -> pd.DataFrame:
        """One drift table (by_token, by_concept, by_context) over every finished step, sorted as the engine does."""
        frames = [pd.read_parquet(p) for s in self.scored()
                  if (p := self.steps_dir / s["checkpoint"] / "tables" / f"{name}.parquet").is_file()]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame()
        df = pd.concat(frames, ignore_index=True)
        if name in SORT:
            keys, ascending = SORT[name]
            df = df.sort_values(keys, ascending=ascending, kind="stable").reset_index(drop=True)
        return df

    def summary(self) -> pd.DataFrame:
        """Per step: accuracy, gold belief, KL, entropy, detrimental share (the base's row first)."""
        rows = [pd.read_parquet(self.steps_dir / s["checkpoint"] / "tables" / "summary.parquet") for s in self.scored()]
        if not rows:
            return pd.DataFrame()
        base = rows[0][rows[0]["checkpoint"] == BASE]
        own = [r[r["checkpoint"] != BASE] for r in rows]
        return pd.concat([base, *own], ignore_index=True).sort_values("step", kind="stable").reset_index(drop=True)

    def finals(self) -> pd.DataFrame:
        """The final beliefs of every trajectory under the base and every scored step."""
        parts = [pd.read_parquet(p) for s in self.scored()
                 for p in [self.steps_dir / s["checkpoint"] / "tables" / "final.parquet"] if p.is_file()]
        if self.has_base():
            base = pd.read_parquet(self.steps_dir / BASE / "beliefs.parquet")
            parts.insert(0, drift.final_beliefs(base) if len(base) else base)
        parts = [p for p in parts if len(p)]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    # ---- the analysis folder
    def assemble(self, probe_set, kept: list[str]) -> Path | None:
        """``OUT/analysis/``: every finished step's rows as one analysis folder; ``kept`` the checkpoint folders
        still on disk (its config's series: what the perturbation lab can load). None before the first step."""
        steps = self.scored()
        if not steps or not self.has_base():
            return None
        from core.drift.analysis import save_folder

        names = [BASE] + [s["checkpoint"] for s in steps]
        config = replace(probe_set.config, checkpoints=list(kept))
        return save_folder(config, self.analysis_dir, False, lambda tmp: self._write_analysis(tmp, names, probe_set))

    def _write_analysis(self, folder: Path, names: list[str], probe_set) -> None:
        from core.drift import explore
        from core.drift.probe import empty_beliefs

        ids = [e.id for e in probe_set.encoded]
        scratch = Path(tempfile.mkdtemp(prefix="sort-", dir=folder))
        try:
            empty = {"tokens": pd.DataFrame(), "beliefs": empty_beliefs(), "effects": pd.DataFrame()}
            for table in PER_TRAJECTORY:
                out = SortedByTrajectory(folder / f"{table}.parquet", ids, scratch / table, row_group=ROW_GROUP)
                for name in names:
                    path = self.steps_dir / name / f"{table}.parquet"
                    if path.is_file():
                        out.add(pd.read_parquet(path))
                out.finish(empty=empty[table])
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        for name in DRIFT_TABLES:
            write_parquet(self.table(name) if name != "summary" else self.summary(), folder / f"{name}.parquet",
                          row_group_size=ROW_GROUP)
        finals = self.finals()
        changes = drift.step_changes(finals) if len(finals) else pd.DataFrame()
        write_parquet(changes, folder / "changes.parquet", row_group_size=ROW_GROUP)
        with open(folder / TEXTS, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in probe_set.records)
        no_effects = pd.DataFrame({"traj_id": pd.Series(dtype=object), "direction": pd.Series(dtype=object)})
        fin = drift.final_beliefs(finals) if len(finals) else finals
        table = explore.trajectory_table(fin, no_effects, probe_set.records)
        if len(fin):
            counts = self._counts()
            for column, key in (("detrimental", "det"), ("beneficial", "ben")):
                table[column] = table["traj_id"].map(counts[key]).fillna(0).astype(int)
            cat = drift.category_accuracy(fin)
            write_parquet(cat.reset_index() if not cat.empty else pd.DataFrame({"gold": []}),
                          folder / "by_category.parquet")
        write_parquet(table, folder / "trajectories.parquet")

    def _counts(self) -> pd.DataFrame:
        parts = [pd.read_parquet(p) for s in self.scored()
                 for p in [self.steps_dir / s["checkpoint"] / "tables" / "counts.parquet"] if p.is_file()]
        parts = [p for p in parts if len(p)]
        if not parts:
            return pd.DataFrame({"det": pd.Series(dtype="int64"), "ben": pd.Series(dtype="int64")})
        return pd.concat(parts, ignore_index=True).groupby("traj_id").sum()


def _rows_of(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows of checkpoint ``name`` (the summary keeps the base's row too)."""
    if df.empty or "checkpoint" not in df:
        return df
    return df[df["checkpoint"].isin([name, BASE])] if "accuracy" in df else df[df["checkpoint"] == name]


def analysis_config(cfg, records_file: Path, labels: list[str]):
    """The analysis config of a watch (``cfg``: a ``core.watch.config.WatchConfig``): its probe set, its settings."""
    from core.drift.analysis import AnalysisConfig

    answers: dict = {}  # the default template and format
    base_names: list[str] = []
    graph = cfg.graph
    if cfg.world:
        from core.workspace.world import load_world

        w = load_world(cfg.world)
        answers = w.answer_settings()  # how its records state their answers
        base_names = [w.manifest.get("base_model_name", "")]
        graph = graph or str(w.graph_path)
    return AnalysisConfig(base=cfg.base, data=str(records_file), graph=graph, labels=list(labels or cfg.labels),
                          positions=cfg.positions, top_k=cfg.top_k, batch_size=cfg.batch_size, device=cfg.device,
                          dtype=cfg.dtype, base_names=base_names, trust_remote_code=cfg.trust_remote_code, **answers)
