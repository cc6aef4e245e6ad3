"""The scorer: every step scored against the base and the previous step equals a post-hoc analysis of the whole
series; a restart resumes at the first unscored step and repeats none; keep releases what is no longer needed."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from core.drift.analysis import Analysis, AnalysisConfig, AnalysisView, run_analysis
from core.errors import InputError
from core.watch import scorer
from core.watch.config import WatchConfig
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
TABLES = ("tokens", "beliefs", "effects", "summary", "by_token", "by_concept", "by_context", "changes")


def _config(watch, world, **kw) -> WatchConfig:
    return WatchConfig(run=str(watch), world=str(world), limit=6, batch_size=4, decode=2, once=True, **kw)


def _same(a, b, name: str) -> None:
    if name in ("tokens", "beliefs", "effects"):  # one trajectory's rows in series order, trajectories sorted
        a, b = (x.sort_values(["traj_id", "step", "position"], kind="stable") for x in (a, b))
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False, atol=1e-5,
                                  obj=name)


def test_the_watch_analysis_equals_a_post_hoc_analysis_of_the_series(recorded, quick_world):
    assert scorer.run(_config(recorded, quick_world)) == 3
    folders = [str(recorded / "checkpoints" / f"checkpoint-{s}") for s in (2, 4, 6)]
    ref = run_analysis(dataclasses.replace(AnalysisConfig.from_world(quick_world, limit=6, batch_size=4),
                                           checkpoints=folders))
    got = Analysis.load(recorded / "analysis")
    for name in TABLES:
        _same(getattr(ref, name), getattr(got, name), name)
    view = AnalysisView.open(recorded / "analysis")  # the explorer's reader
    assert view.config.checkpoints == folders and len(view.trajectories()) == 6
    status = json.loads((recorded / "status.json").read_text())
    assert status["state"] == "done" and status["scored"] == [2, 4, 6] and status["queued"] == []
    steps = sorted((recorded / "steps").iterdir())
    assert [p.name for p in steps] == ["base", "checkpoint-2", "checkpoint-4", "checkpoint-6"]
    answers = json.loads((recorded / "steps" / "checkpoint-2" / "step.json").read_text())["answers"]
    assert len(answers) == 2 and {a["traj_id"] for a in answers} == {"test-00000", "test-00001"}


def test_killed_mid_run_it_resumes_at_the_first_unscored_step_and_repeats_none(recorded, quick_world, tmp_path):
    cfg = _config(recorded, quick_world)
    cfg.save(tmp_path / "watch.json")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "core.jobs.worker", "watch", "--config", str(tmp_path / "watch.json"),
                             "--workspace", str(tmp_path / "ws")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = recorded / "steps" / "checkpoint-4" / "step.json"
    deadline = time.monotonic() + 300
    while not second.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # a crash: no clean-up, the lock released by the OS
    proc.wait()
    assert second.is_file(), "the scorer did not finish two steps"
    before = {p.parent.name: json.loads(p.read_text())["scored_at"] for p in (recorded / "steps").glob("*/step.json")
              if p.parent.name != "base"}
    assert set(before) in ({"checkpoint-2", "checkpoint-4"}, {"checkpoint-2", "checkpoint-4", "checkpoint-6"})
    assert scorer.run(cfg) == 3 - len(before)
    after = {p.parent.name: json.loads(p.read_text())["scored_at"] for p in (recorded / "steps").glob("*/step.json")
             if p.parent.name != "base"}
    assert sorted(after) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert all(after[k] == v for k, v in before.items())  # nothing scored twice
    assert not [p for p in (recorded / "steps").iterdir() if p.name.startswith(".")]  # the half-written step: gone
    got = Analysis.load(recorded / "analysis")
    assert got.summary["checkpoint"].tolist() == ["base", "checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert got.tokens.groupby("checkpoint").size().nunique() == 1  # each step's rows once
    assert (tmp_path / "ws" / "watches" / "watch.json").is_file()  # listed on the workspace's Watch page


def test_keep_none_releases_each_step_once_the_next_is_scored_but_an_alarm_step(recorded, quick_world):
    (recorded / "watch.json").write_text(json.dumps({**json.loads((recorded / "watch.json").read_text()),
                                                     "keep": "none"}))
    scorer.run(_config(recorded, quick_world))
    left = sorted(p.name for p in (recorded / "checkpoints").iterdir())
    alarmed = {a["checkpoint"] for a in scorer.read_alarms(recorded)}
    assert "checkpoint-6" in left  # the last one stays: the next step would be measured against it
    assert set(left) == {"checkpoint-6"} | (alarmed & {"checkpoint-2", "checkpoint-4"})
    assert json.loads((recorded / "status.json").read_text())["released"] == sorted(
        int(c.split("-")[1]) for c in {"checkpoint-2", "checkpoint-4"} - alarmed)
    assert AnalysisView.open(recorded / "analysis").config.checkpoints == [str(recorded / "checkpoints" / c) for c in left]
    assert len(Analysis.load(recorded / "analysis").summary) == 4  # every step's drift stays in the analysis


def test_a_hand_edited_keep_or_kept_file_stops_the_scorer_before_it_releases_anything(recorded, quick_world):
    """keep "All" was released as "none"; kept.json's "kept" as a string kept its letters: checkpoint-2, an alarm's
    step perhaps and the only copy once the trainer's rotation deleted its own, was deleted."""
    marker = json.loads((recorded / "watch.json").read_text())
    (recorded / "watch.json").write_text(json.dumps({**marker, "keep": "All"}))
    with pytest.raises(InputError, match=r"watch\.json: field 'keep': expected one of adapters, all, none, got \"All\""):
        scorer.run(_config(recorded, quick_world))
    (recorded / "watch.json").write_text(json.dumps({**marker, "keep": "none"}))
    (recorded / "kept.json").write_text(json.dumps({"kept": "checkpoint-2"}))
    with pytest.raises(InputError, match=r"kept\.json: field 'kept': expected a list of checkpoint names"):
        scorer.run(_config(recorded, quick_world))
    assert sorted(p.name for p in (recorded / "checkpoints").iterdir()) == [f"checkpoint-{s}" for s in (2, 4, 6)]


def test_linked_checkpoints_are_scored_and_only_the_links_released(recorded, quick_world, tmp_path):
    """checkpoint-2 links out of the watch (kept: never deleted there), checkpoint-4 links to a folder inside it
    (rmtree refused a link: the scorer failed with "Cannot call rmtree on a symbolic link"); keep none."""
    marker = json.loads((recorded / "watch.json").read_text())
    (recorded / "watch.json").write_text(json.dumps({**marker, "keep": "none"}))
    ckpts = recorded / "checkpoints"
    (ckpts / "checkpoint-2").rename(tmp_path / "outside-2")
    (ckpts / "checkpoint-2").symlink_to(tmp_path / "outside-2")
    (ckpts / "checkpoint-4").rename(ckpts / "real-4")
    (ckpts / "checkpoint-4").symlink_to(ckpts / "real-4")
    assert scorer.run(_config(recorded, quick_world)) == 3
    alarmed = {a["checkpoint"] for a in scorer.read_alarms(recorded)}
    assert (tmp_path / "outside-2" / "adapter_model.safetensors").is_file()  # out of the watch: untouched
    assert (ckpts / "checkpoint-2").is_symlink()
    assert (ckpts / "checkpoint-4").is_symlink() == ("checkpoint-4" in alarmed)  # the link released, not kept
    assert (ckpts / "real-4" / "adapter_model.safetensors").is_file()  # its target is never deleted


def test_a_resumed_watch_with_other_settings_is_refused(recorded, quick_world):
    scorer.run(_config(recorded, quick_world))
    with pytest.raises(InputError, match="other settings .*limit"):
        scorer.run(dataclasses.replace(_config(recorded, quick_world), limit=3))
    with pytest.raises(InputError, match="its own output"):
        scorer.run(dataclasses.replace(_config(recorded, quick_world), out=str(recorded.parent / "elsewhere")))
    assert scorer.run(WatchConfig(run=str(recorded), once=True)) == 0  # resumed from its saved settings


def test_a_worlds_answer_format_reads_the_probe_set(recorded, quick_world, tmp_path):
    """A world whose completions answer "Verdict: X" and whose probe records carry no label: the watch read them with
    the default format, whose bare-answer rule took "Verdict: Edema" for the label, so the gold answers and the
    probe's accuracy were about words the model never answers with."""
    import re
    import shutil

    world = tmp_path / "world"
    shutil.copytree(quick_world, world, ignore=shutil.ignore_patterns("analysis"))
    manifest = json.loads((world / "world.json").read_text())
    manifest["answer_format"] = {"pattern": r"Verdict: (?P<answer>.+)", "sentence": "Verdict: {}",
                                 "template": " </think> Verdict:"}
    (world / "world.json").write_text(json.dumps(manifest))
    rows = []
    for line in (quick_world / "data" / "test.jsonl").read_text().splitlines()[:3]:
        rec = json.loads(line)
        label = rec.pop("label")
        rec["completion"] = re.sub(r"</think>.*$", f"</think> Verdict: {label}", rec["completion"], flags=re.S)
        rows.append(json.dumps(rec))
    data = tmp_path / "verdicts.jsonl"
    data.write_text("\n".join(rows) + "\n")
    cfg = dataclasses.replace(_config(recorded, world, data=str(data)), limit=3, decode=0)
    assert scorer.run(cfg) == 3
    probe = [json.loads(x) for x in (recorded / "probe.jsonl").read_text().splitlines()]
    assert [r["label"] for r in probe] == [json.loads(x)["completion"].split("Verdict: ")[1] for x in rows]
    beliefs = Analysis.load(recorded / "analysis").beliefs
    assert beliefs["gold"].notna().all() and not beliefs["gold"].str.startswith("Verdict").any()
