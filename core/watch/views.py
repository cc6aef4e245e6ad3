"""A watch read for display, the workspace's list of watches, and a finished watch turned into a world.

    register(ws.root, out)                  # the Watch page lists it (``<workspace>/watches/<name>.json``)
    view = WatchView.open(out)              # trainer, scorer, steps, alarms, lag: plain data
    view.stop("the Watch page")             # the callback ends training at its next step
    world = open_as_world(out, ws.root, "grpo-0412")   # kept checkpoints + the watch analysis as a world
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from core.errors import InputError
from core.watch import layout
from core.watch.layout import CONFIG, STATUS, is_watch_folder, read_alarms
from core.watch.store import ANALYSIS, StepStore

WATCHES = "watches"  # under the workspace: one JSON per watch, naming its folder


def register(workspace_root: str | Path, out: str | Path, name: str | None = None) -> Path:
    """Note the watch in ``out`` in the workspace (``watches/<name>.json``), so that the Watch page lists it."""
    out = Path(out).resolve()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or out.name).strip("-.") or "watch"
    folder = Path(workspace_root) / WATCHES
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    known = layout.read_json(path) or {}
    if known.get("out") and Path(known["out"]) != out:  # another watch of that name: a suffix
        path = folder / f"{name}-{abs(hash(str(out))) % 10_000:04d}.json"
    layout.write_json(path, {"out": str(out), "registered": time.time()})
    return path


def list_watches(workspace_root: str | Path | None) -> list[Path]:
    """The watch folders registered in the workspace that still exist, newest first."""
    if not workspace_root:
        return []
    found = []
    for f in (Path(workspace_root) / WATCHES).glob("*.json"):
        data = layout.checked(layout.read_json(f), {"out": str, "registered": layout.NUMBER}, str(f), [])
        if data.get("out") and is_watch_folder(data["out"]):  # a hand-edited entry of another kind: skipped
            found.append((data.get("registered", 0), Path(data["out"])))
    return list(dict.fromkeys(out for _, out in sorted(found, key=lambda x: x[0], reverse=True)))  # once each


def watch_analyses(workspace_root: str | Path | None) -> list[Path]:
    """The analysis folders of the workspace's watches (the Drift explorer's picker offers them)."""
    return [out / ANALYSIS for out in list_watches(workspace_root) if (out / ANALYSIS / "config.json").is_file()]


@dataclass
class WatchView:
    """What the Watch page shows of one watch folder, read fresh (a few small files)."""

    out: Path
    marker: dict
    trainer: dict
    status: dict
    steps: list[dict]
    alarms: list[dict]
    problems: list[str] = field(default_factory=list)  # fields of its files left out, named (the page warns)
    _records: dict = field(default_factory=dict, repr=False)  # record.json by checkpoint, read once per view

    @classmethod
    def open(cls, out: str | Path) -> WatchView:
        out = Path(out)
        if not is_watch_folder(out):
            raise InputError(f"{out}: not a watch folder (expected {layout.MARKER})")
        problems: list[str] = []
        status = layout.read_checked(out / STATUS, layout.STATUS_FIELDS, problems)
        if "scoring" in status and not isinstance(status["scoring"].get("step"), int):
            problems.append(f"{out / STATUS}: field 'scoring': expected an object with an integer 'step'; left out")
            status.pop("scoring")
        alarms = [layout.checked(a, layout.ALARM_FIELDS, f"{out / layout.ALARMS}, alarm {i + 1}", problems)
                  for i, a in enumerate(read_alarms(out))]
        return cls(out, layout.read_json(out / layout.MARKER) or {},
                   layout.read_checked(out / layout.TRAINER, layout.TRAINER_FIELDS, problems), status,
                   StepStore(out).scored(), alarms, problems)

    @property
    def name(self) -> str:
        return self.out.name

    @property
    def has_callback(self) -> bool:
        """Whether a trainer callback records into this folder (it can be asked to stop)."""
        return self.marker.get("source") == "callback"

    @property
    def trainer_state(self) -> str:
        """running | ended | stopped | unknown (a followed folder: no callback reports its trainer). A trainer that
        says it runs but whose process is gone from this machine (killed: it could not say so) has stopped."""
        return "stopped" if layout.trainer_gone(self.trainer) else self.trainer.get("status", "unknown")

    @property
    def scorer_state(self) -> str:
        """starting | waiting | scoring | done | failed | cancelled, or "died" when its process is gone."""
        state = self.status.get("state", "not started")
        if state in ("starting", "waiting", "scoring") and not layout.alive(self.status.get("pid")):
            return "died"
        return state

    @property
    def live(self) -> bool:
        return self.trainer_state == "running" or self.scorer_state in ("starting", "waiting", "scoring")

    @property
    def finished(self) -> bool:
        """The run has ended and every recorded step is scored: ready to become a world."""
        return self.trainer_state in ("ended", "stopped", "unknown") and not self.live and bool(self.steps)

    def recorded(self) -> list[dict]:
        """Each recorded checkpoint: step, name, kept on disk or released, how it was recorded and its cost."""
        scored = {s["checkpoint"] for s in self.steps}
        rows = {}
        for f in (self.out / layout.CHECKPOINTS).glob("checkpoint-*"):
            rec = self._record(f.name)
            rows[f.name] = {"checkpoint": f.name, "step": rec.get("step"), "how": rec.get("how"),
                            "MB": round(rec.get("bytes", 0) / 2**20, 2), "record_s": rec.get("seconds"),
                            "scored": f.name in scored, "on disk": True}
        for s in self.steps:
            rows.setdefault(s["checkpoint"], {"checkpoint": s["checkpoint"], "step": s["step"], "scored": True,
                                              "on disk": False})
        return sorted(rows.values(), key=lambda r: r["step"] or 0)

    def lag(self) -> dict:
        """How far the scorer is behind the trainer: checkpoints queued, seconds since the oldest queued was
        recorded, and the trainer's step against the last scored one."""
        queued = [r for r in self.recorded() if not r["scored"] and r["on disk"]]
        oldest = min(self._record(r["checkpoint"]).get("recorded_at", time.time()) for r in queued) if queued else None
        last = self.steps[-1]["step"] if self.steps else None
        return {"queued": len(queued), "seconds": None if oldest is None else max(0.0, time.time() - oldest),
                "trainer_step": self.trainer.get("global_step"), "scored_step": last}

    def _record(self, name: str) -> dict:
        """A recorded checkpoint's ``record.json``, its fields checked (a bad one left out, named once); read once
        per view (the live page asks for each checkpoint's twice a redraw: the table and the lag)."""
        if name not in self._records:
            self._records[name] = layout.read_checked(self.out / layout.CHECKPOINTS / name / layout.RECORD,
                                                      layout.RECORD_FIELDS, self.problems)
        return self._records[name]

    def log_history(self) -> pd.DataFrame:
        """The trainer's own log (loss, reward, ...) by step: the callback's ``trainer.json``, else the newest recorded
        checkpoint's ``trainer_state.json``."""
        history = self.trainer.get("log_history")
        if not history:
            ckpts = sorted((self.out / layout.CHECKPOINTS).glob("checkpoint-*"),
                           key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else 0)
            state = layout.read_checked(ckpts[-1] / "trainer_state.json", layout.STATE_FIELDS, self.problems) \
                if ckpts else {}
            history = state.get("log_history") or []
        rows = [h for h in history if isinstance(h, dict) and "step" in h]
        return pd.DataFrame(rows) if rows else pd.DataFrame({"step": []})

    def summary(self) -> pd.DataFrame:
        return StepStore(self.out).summary()

    @property
    def analysis(self) -> Path | None:
        path = self.out / ANALYSIS
        return path if (path / "config.json").is_file() else None

    def stop(self, by: str = "the Watch page") -> None:
        """Ask the trainer to stop (``stop.json``; the callback reads it at its next step)."""
        layout.write_json(self.out / layout.STOP, {"by": by, "time": time.time()})

    @property
    def stop_asked(self) -> dict | None:
        """``stop.json`` as the callback reads it (any JSON object asks for a stop), its ``by`` checked."""
        data = layout.read_json(self.out / layout.STOP)
        return None if data is None else layout.checked(data, layout.STOP_FIELDS, str(self.out / layout.STOP),
                                                        self.problems)

    def config(self) -> dict:
        return layout.read_json(self.out / CONFIG) or {}

    @property
    def scorer_running(self) -> bool:
        return self.scorer_state in ("starting", "waiting", "scoring")

    @property
    def needs_scorer(self) -> bool:
        """No scorer runs while the trainer runs or recorded checkpoints wait unscored (one can be started)."""
        return not self.scorer_running and (self.trainer_state == "running" or self.lag()["queued"] > 0)

    def scorer_jobs(self, jobs_dir: str | Path) -> list:
        """The workspace's background scorer jobs (kind ``watch``) of this watch, newest first."""
        from core.jobs import supervisor

        return [j for j in supervisor.list_jobs(jobs_dir, "watch")
                if j.meta.get("out") and Path(j.meta["out"]).resolve() == self.out.resolve()]


def open_as_world(out: str | Path, workspace_root: str | Path, name: str):
    """The finished watch in ``out`` as a world in ``<workspace>/worlds/<name>``: its base, the checkpoints still kept
    (the watch's own copies and links, by step), the probe set as its dataset, its concept graph and answer format,
    and the watch analysis as the world's analysis (the explorer opens it at once). Nothing of the watch is moved."""
    from core.workspace import world as world_mod

    view = WatchView.open(out)
    if view.analysis is None:
        raise InputError(f"{out}: no analysis yet (no step scored)")
    cfg = view.config()
    for key in ("base", "world", "graph"):  # the scorer's config.json names them; a hand-edited one is named
        if not isinstance(cfg.get(key), str if key == "base" else (str, type(None))):
            raise InputError(f"{Path(out) / CONFIG}: field {key!r}: expected a path (a string), got "
                             f"{json.dumps(cfg.get(key))[:60]}")
    kept = [Path(r["checkpoint"]) for r in view.recorded() if r["on disk"]]
    checkpoints = [str(Path(out).resolve() / layout.CHECKPOINTS / k) for k in kept]
    target = world_mod.world_dir(workspace_root, name)
    made = world_mod.create_world(target, name, cfg["base"], checkpoints, [str(Path(out).resolve() / "probe.jsonl")],
                                  cfg.get("graph"), description=f"watched run {Path(out).resolve()}")
    manifest = json.loads((made.root / world_mod.MANIFEST).read_text())
    manifest["watch"] = str(Path(out).resolve())
    if cfg.get("world"):  # the watched world's answer format (and plug-in) carry over
        source = world_mod.load_world(cfg["world"]).manifest
        manifest.update({k: source[k] for k in ("answer_format", "base_model_name") if k in source})
    shutil.copytree(view.analysis, made.root / "analysis")
    (made.root / world_mod.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return world_mod.load_world(made.root)
