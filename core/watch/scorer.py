"""The scorer beside the trainer: score each recorded checkpoint against the base and the previous one, step by step.

    python -m core.jobs.worker watch --config watch.json     # a background job (kind ``watch``: core.watch.job)
    workbench watch --run WATCH_DIR --base BASE --data FILE  # the same from its flags

``run(cfg, progress, should_cancel)`` loops: take new checkpoints (a callback's watch folder, or a trainer's folder it
follows, ``core.watch.follow``), score the oldest unscored one (``core.watch.steps``), store its tables
(``core.watch.store``), raise alarms (``core.watch.alarms``), release what ``keep`` lets go, rebuild the analysis.
It queues rather than drops when it falls behind, and a restart resumes at the first unscored step: a step's
tables are committed by one rename, so a killed scorer loses the step it was on and repeats none. It ends when the
trainer has ended and the queue is empty (a callback's folder), after ``idle_exit`` seconds without a checkpoint,
with ``once`` when nothing is left, or on cancel (SIGTERM).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InputError
from core.progress import Cancelled, Progress
from core.watch import layout
from core.watch.config import WatchConfig
from core.watch.layout import CONFIG, KEPT, PROBE, STATUS, is_watch_folder, read_alarms

ASSEMBLE_EVERY = 30.0  # seconds: while behind, the analysis is rebuilt at most this often (always when caught up)
SCORING_FIELDS = ("base", "data", "world", "graph", "labels", "limit", "positions", "top_k", "dtype", "trust_remote_code")


@dataclass
class Watch:
    """A watch's folders and settings, resolved: where checkpoints are recorded and where results go."""

    cfg: WatchConfig
    out: Path
    follower: object | None  # core.watch.follow.Follower when following a trainer's folder
    keep: str
    status: dict = field(default_factory=dict)

    @classmethod
    def open(cls, cfg: WatchConfig) -> Watch:
        run = Path(cfg.run)
        if is_watch_folder(run):
            out = run.resolve()
            if cfg.out and Path(cfg.out).resolve() != out:
                raise InputError(f"--out {cfg.out}: a callback's watch folder is its own output ({out}); leave --out out")
            keep, follower = (layout.read_json(out / layout.MARKER) or {}).get("keep", "adapters"), None
            if keep not in layout.KEEP:  # "All" or 5 released checkpoints as "none" does: the only copies, maybe
                raise InputError(f"{out / layout.MARKER}: field 'keep': expected one of {', '.join(layout.KEEP)}, got "
                                 f"{json.dumps(keep)[:60]}; nothing is scored or released until it is fixed")
        else:
            from core.watch import callback
            from core.watch.follow import Follower

            if not run.is_dir():
                raise InputError(f"{run}: folder not found (expected a callback's watch folder or a trainer's output folder)")
            if not cfg.out:
                raise InputError(f"{run}: a trainer's output folder; give --out for the watch's record (it is never "
                                 "written into the trainer's folder)")
            out = Path(cfg.out).resolve()
            if out == run.resolve() or out.is_relative_to(run.resolve()):
                raise InputError(f"--out {out}: inside the trainer's folder {run}; choose a folder outside it")
            follower = Follower(run, out, cfg.settle)
            callback.init_watch(out, cfg.keep, source=f"folder {run.resolve()}")
            keep = cfg.keep
        _check_same_settings(out, cfg)
        return cls(cfg, out, follower, keep)


def _check_same_settings(out: Path, cfg: WatchConfig) -> None:
    """A watch resumed with other scoring settings would mix two analyses in one folder: refused."""
    saved = out / CONFIG
    if not saved.is_file():
        return
    old = WatchConfig.load(saved)
    changed = [k for k in SCORING_FIELDS if getattr(old, k) != getattr(cfg, k)]
    if changed:
        raise InputError(f"{saved}: this watch was scored with other settings ({', '.join(changed)}); "
                         "use another output folder, or the same settings")


def resolve(cfg: WatchConfig) -> WatchConfig:
    """``cfg`` with the base, probe set and graph filled in from the watch's saved settings (a resumed watch) or from
    its world, and checked."""
    import dataclasses

    saved = (Path(cfg.run) if is_watch_folder(cfg.run) else Path(cfg.out or cfg.run)) / CONFIG
    if saved.is_file() and not (cfg.base or cfg.data or cfg.world):
        old = WatchConfig.load(saved)
        cfg = dataclasses.replace(cfg, **{k: getattr(old, k) for k in SCORING_FIELDS})
    if cfg.world:
        from core.workspace.world import load_world

        w = load_world(cfg.world)
        cfg = dataclasses.replace(cfg, base=cfg.base or str(w.base_model_dir),
                                  data=cfg.data or str(w.dataset_path(w.manifest.get("default_dataset", "test"))),
                                  graph=cfg.graph or str(w.graph_path))
    if not cfg.base or not cfg.data:
        raise InputError("watch: give --base BASE and --data FILE (the probe set), or --world W")
    return cfg


def run(cfg: WatchConfig, progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None) -> int:
    """The scorer's loop (see the module docstring); returns the number of steps scored by this call."""
    from core.io.locks import lock_folder

    cfg = resolve(cfg)
    watch = Watch.open(cfg)
    lock = lock_folder(watch.out, "watch")  # one scorer per watch folder
    try:
        return _Loop(watch, progress, should_cancel).run()
    finally:
        lock.close()


class _Loop:
    def __init__(self, watch: Watch, progress, should_cancel):
        from core.watch.store import StepStore

        self.w, self.cfg, self.progress = watch, watch.cfg, progress
        self.cancelled = should_cancel or (lambda: False)
        self.store = StepStore(watch.out)
        self.store.clean()  # what a killed scorer was writing: scored again
        self.cfg.save(watch.out / CONFIG)
        self.probe_set = None  # loaded with the first checkpoint (reads the tokenizer, the graph)
        self.scorer = None
        self.status = {"state": "starting", "scored": [s["step"] for s in self.store.scored()], "missed": [],
                       "released": [], "started": time.time()}
        self.assembled_at = 0.0
        self.dirty = False

    def run(self) -> int:
        scored, idle_since = 0, time.monotonic()
        try:
            self._catch_up_alarms()
            while True:
                if self.w.follower is not None:
                    self.w.follower.poll()
                    self.status["missed"] = self.w.follower.missed
                queue = self._queue()
                if queue:
                    self._score(queue[0], len(queue))
                    scored, idle_since = scored + 1, time.monotonic()
                    continue
                self._assemble(force=True)
                if self.cfg.once or self._trainer_ended() or (
                        self.cfg.idle_exit and time.monotonic() - idle_since > self.cfg.idle_exit):
                    break
                self._set("waiting")
                if self.progress:  # the job panel shows a waiting scorer as such, not as "starting"
                    n = len(self.store.scored())
                    self.progress(n, n + 1, f"{n} step(s) scored; waiting for the next checkpoint")
                self._sleep(self.cfg.poll)
        except (Cancelled, KeyboardInterrupt):
            self._assemble(force=True)
            self._set("cancelled")
            raise
        except BaseException as e:
            self._set("failed", error=str(e))
            raise
        self._set("done")
        return scored

    # ---- the queue
    def recorded(self) -> list:
        from core.models.checkpoints import read_checkpoint

        folders = [p for p in (self.w.out / layout.CHECKPOINTS).glob("checkpoint-*") if p.is_dir()]
        return sorted((read_checkpoint(p) for p in folders), key=lambda c: c.step)

    def _queue(self) -> list:
        done = {s["checkpoint"] for s in self.store.scored()}
        return [c for c in self.recorded() if c.name not in done]

    def _trainer_ended(self) -> bool:
        """The trainer said it ended or stopped, or it said it runs but its process is gone (``layout.trainer_gone``)."""
        trainer = layout.read_json(self.w.out / layout.TRAINER) or {}
        return trainer.get("status") in ("ended", "stopped") or layout.trainer_gone(trainer)

    # ---- one step
    def _score(self, info, queued: int) -> None:
        started = time.monotonic()
        self._prepare()
        scored = self.store.scored()
        prev = self._previous(info, scored)
        self._set("scoring", scoring={"checkpoint": info.name, "step": info.step, "started": time.time()},
                  queued=[c.step for c in self._queue()])
        total = len(scored) + queued
        report = (lambda d, t, m: self.progress(len(scored) + d / max(t, 1e-12), total,
                                                f"{info.name} (step {info.step}): {m}")) if self.progress else None
        result = self.scorer.score(prev, info, with_base=not self.store.has_base(), progress=report,
                                   should_cancel=self.cancelled)
        self.store.write(result, self.probe_set, time.monotonic() - started, str(info.path))
        self._alarms(info.name)
        self.status["scored"] = [s["step"] for s in self.store.scored()]
        self._release(prev, info)
        self.dirty = True
        self._assemble(force=False)

    def _previous(self, info, scored: list[dict]):
        """The last scored step before ``info`` (its folder must still be there: ``_release`` keeps it)."""
        from core.models.checkpoints import read_checkpoint

        before = [s for s in scored if s["step"] < info.step]
        if not before:
            return None
        folder = self.w.out / layout.CHECKPOINTS / before[-1]["checkpoint"]
        if not folder.is_dir():
            raise InputError(f"{folder}: the previous step's checkpoint is gone (needed for the KL to the previous "
                             "step); it was deleted outside the watch")
        return read_checkpoint(folder)

    def _prepare(self) -> None:
        """The probe set (fixed at the first start: ``probe.jsonl``) and the step scorer, once."""
        if self.scorer is not None:
            return
        from core.io.trajectories import read_jsonl
        from core.watch.steps import ProbeSet, StepScorer
        from core.watch.store import analysis_config

        probe_file = self.w.out / PROBE
        acfg = analysis_config(self.cfg, probe_file, self.cfg.labels)  # the world's answer format, if a world
        if not probe_file.is_file():
            records = read_jsonl(self.cfg.data, self.cfg.limit, fmt=acfg.answers)  # unlabelled: the answer given
            if not records:
                raise InputError(f"{self.cfg.data}: no trajectories to probe with")
            tmp = probe_file.with_name(f".{PROBE}.tmp")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
            tmp.replace(probe_file)
        records = read_jsonl(probe_file, fmt=acfg.answers)
        self.probe_set = ProbeSet.of(acfg, records)
        self.scorer = StepScorer(self.probe_set, acfg.answers, self.cfg.decode)

    # ---- alarms, releases, the analysis
    def _alarms(self, checkpoint: str) -> list[dict]:
        from core.watch import alarms

        s = self.store
        answers = {x["checkpoint"]: x.get("answers") or [] for x in s.scored()}
        found = alarms.evaluate(s.summary(), s.table("by_concept"), s.table("by_token"), s.table("by_context"),
                                s.finals(), answers, self.cfg, checkpoint)
        have = {(a.get("rule"), a.get("checkpoint")) for a in read_alarms(self.w.out)}
        with open(self.w.out / layout.ALARMS, "a", encoding="utf-8") as f:
            for a in found:
                if (a["rule"], a["checkpoint"]) not in have:
                    f.write(json.dumps({**a, "time": time.time()}) + "\n")
        if found:
            self._keep_step(checkpoint)
        (s.steps_dir / checkpoint / "alarms.done").touch()
        return found

    def _catch_up_alarms(self) -> None:
        """Steps stored by a scorer killed before it judged them: judged now, in order."""
        for s in self.store.scored():
            if not (self.store.steps_dir / s["checkpoint"] / "alarms.done").is_file():
                self._alarms(s["checkpoint"])

    def _kept(self) -> set[str]:
        """The steps alarms keep (``kept.json``); a file there that does not say so stops the scorer, named:
        releasing on a guess could delete the checkpoint an alarm fired at."""
        path = self.w.out / KEPT
        if not path.exists():
            return set()
        kept = (layout.read_json(path) or {}).get("kept")
        if not isinstance(kept, list) or not all(isinstance(k, str) for k in kept):
            raise InputError(f"{path}: field 'kept': expected a list of checkpoint names (the steps alarms keep), got "
                             f"{json.dumps(kept)[:60]}; nothing is released until it is fixed")
        return set(kept)

    def _keep_step(self, checkpoint: str) -> None:
        kept = self._kept() | {checkpoint}
        layout.write_json(self.w.out / KEPT, {"kept": sorted(kept)})

    def _release(self, prev, new) -> None:
        """Let ``prev`` go once ``new`` is scored, as ``keep`` says (never a step an alarm fired at; only the watch's
        own copies and links, never the trainer's folder)."""
        if prev is None or self.w.keep == "all":
            return
        kept = self._kept()
        if prev.name in kept or (self.w.keep == "adapters" and prev.kind == "adapter"):
            return
        folder = self.w.out / layout.CHECKPOINTS / prev.name
        if folder.is_dir() and folder.resolve().is_relative_to((self.w.out / layout.CHECKPOINTS).resolve()):
            folder.unlink() if folder.is_symlink() else shutil.rmtree(folder)  # a link goes, never its target
            self.status["released"] = sorted({*self.status.get("released", []), prev.step})

    def _assemble(self, force: bool) -> None:
        if not self.dirty or (not force and time.monotonic() - self.assembled_at < ASSEMBLE_EVERY and self._queue()):
            return
        if self.probe_set is None:
            return
        kept = [str(c.path) for c in self.recorded()]
        self.store.assemble(self.probe_set, kept)
        self.assembled_at, self.dirty = time.monotonic(), False

    # ---- status
    def _set(self, state: str, **extra) -> None:
        import os
        import socket

        self.status.update(state=state, pid=os.getpid(), host=socket.gethostname(), updated=time.time(), **extra)
        if state != "scoring":
            self.status.pop("scoring", None)
        self.status["queued"] = extra.get("queued", [c.step for c in self._queue()] if state != "failed" else [])
        layout.write_json(self.w.out / STATUS, self.status)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.cancelled():
                raise Cancelled("watch cancelled")
            time.sleep(min(0.2, end - time.monotonic()))
