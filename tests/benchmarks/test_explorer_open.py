"""Opening a large analysis in the explorer and switching trajectory: the whole-table load the page did
before (``Analysis.load`` + the trajectory ranking over all beliefs and effects + a token matrix filtered out
of the whole tables) vs ``AnalysisView`` (summary tables, the stored ranking, one trajectory's rows by parquet
filter). Synthetic tables of the real shape: 3 checkpoints, 14 labels, top-5 lists. Prints seconds and the
resident memory each way adds.

Toy size by default (200 trajectories x 300 tokens); ``WORKBENCH_BENCH_FULL=1`` runs 2,000 x 300 and 50 x 4,096.

``test_long_cot_window_vs_full_width``: switching to a 4,096-token trajectory of 7 checkpoints, the
full-width heatmap (every cell with its top-k hover text) vs one window with the minimap, 80 tokens (the
default) and 400 (the widest); top-k read for the window's rows only: seconds and the figure's JSON size (what the browser receives).
"""

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.drift import explore
from core.drift import findings as drift
from core.drift.analysis import Analysis, AnalysisConfig, AnalysisView
from tests.drift_reference import drivers_by_token
from workbench import charts

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]
FULL = os.environ.get("WORKBENCH_BENCH_FULL") == "1"
SHAPES = [(2000, 300), (50, 4096)] if FULL else [(200, 300)]
LABELS = [f"label {k}" for k in range(14)]
CHECKPOINTS = [("base", 0), ("checkpoint-80", 80), ("checkpoint-160", 160)]


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    return 0


def _analysis(n: int, length: int, rng, checkpoints=CHECKPOINTS) -> Analysis:
    ids = np.array([f"t{i:05d}" for i in range(n)], dtype=object)
    k = len(checkpoints)
    rows = n * length
    traj = np.tile(np.repeat(ids, length), k)
    ckpt = np.repeat(np.array([c for c, _ in checkpoints], dtype=object), rows)
    step = np.repeat(np.array([s for _, s in checkpoints]), rows)
    pos = np.tile(np.arange(length), n * k)
    words = np.array([f" w{i}" for i in range(500)], dtype=object)
    token = words[rng.integers(0, 500, rows * k)]
    top = [words[rng.integers(0, 500, 5)] for _ in range(1000)]
    tokens = pd.DataFrame({"traj_id": traj, "checkpoint": ckpt, "step": step, "position": pos,
                           "token_id": rng.integers(0, 150_000, rows * k), "token": token,
                           "in_think": True, **{c: rng.random(rows * k) for c in drift_columns()},
                           "rank": rng.integers(1, 50, rows * k)})
    tokens["prob"] = np.exp(tokens["logprob"])
    tokens["top_tokens"] = [top[i] for i in rng.integers(0, 1000, rows * k)]
    tokens["top_probs"] = [np.sort(rng.random(5))[::-1].round(5) for _ in range(rows * k)]
    z = rng.dirichlet(np.ones(len(LABELS)), rows * k)
    gold = np.array(LABELS, dtype=object)[rng.integers(0, len(LABELS), n)]
    beliefs = pd.DataFrame(z, columns=[f"p:{y}" for y in LABELS]).assign(
        traj_id=traj, checkpoint=ckpt, step=step, position=pos, label_mass=0.9,
        answer=np.array(LABELS, dtype=object)[z.argmax(1)], gold=np.tile(np.repeat(gold, length), k))
    beliefs["gold_prob"] = z[np.arange(len(z)), [LABELS.index(g) for g in beliefs["gold"]]]
    enc_free = beliefs[["traj_id", "checkpoint", "step", "position", "gold_prob"]]
    effects = _effects(enc_free, token, k)
    summary = pd.DataFrame({"checkpoint": [c for c, _ in checkpoints], "step": [s for _, s in checkpoints],
                            "accuracy": 0.5, "final_gold_prob": 0.5, "kl_base": 0.1, "kl_prev": 0.1, "js_base": 0.1,
                            "entropy": 1.0, "share_detrimental": 0.1, "share_beneficial": 0.1})
    cfg = AnalysisConfig(base="model", data="missing.jsonl")
    records = [{"id": t, "prompt": "p", "completion": "c", "label": g} for t, g in zip(ids, gold, strict=True)]
    return Analysis(cfg, tokens, beliefs, effects, summary, drivers_by_token(effects.head(20_000)),
                    pd.DataFrame(), pd.DataFrame(), drift.step_changes(beliefs, n_permutations=50), records)


def drift_columns():
    return ("logprob", "entropy", "kl_base", "js_base", "kl_prev", "js_prev")


def _effects(b: pd.DataFrame, token: np.ndarray, k: int = 3) -> pd.DataFrame:
    e = b.rename(columns={"gold_prob": "gold_before"}).assign(next_position=b["position"] + 1, token=token)
    e["gold_after"] = e["gold_before"].shift(-1).fillna(0.5)
    e["effect"] = e["gold_after"] - e["gold_before"]
    e["effect_base"] = np.tile(e["effect"].to_numpy()[: len(e) // k], k)
    e["effect_drift"] = e["effect"] - e["effect_base"]
    e["belief_drift"] = 0.0
    e["direction"] = np.select([e["effect_drift"] < -0.05, e["effect_drift"] > 0.05], ["detrimental", "beneficial"],
                               "neutral")
    e["region"] = "cot"
    return e


@pytest.mark.parametrize("n,length", SHAPES)
def test_explorer_open_and_switch(n, length, tmp_path):
    out = _analysis(n, length, np.random.default_rng(0)).save(tmp_path / "big")
    traj = "t00007"
    base = _rss()
    t = time.perf_counter()
    a = Analysis.load(out)
    explore.trajectory_table(a.beliefs, a.effects, a.records)
    old_open = time.perf_counter() - t
    old_mem = _rss() - base
    t = time.perf_counter()
    explore.token_matrix(a.tokens, a.effects, traj, "effect_drift")
    old_switch = time.perf_counter() - t
    del a
    base = _rss()
    t = time.perf_counter()
    view = AnalysisView.open(out)
    view.trajectories()
    new_open = time.perf_counter() - t
    new_mem = _rss() - base
    t = time.perf_counter()
    explore.token_matrix(view.rows("tokens", traj), view.rows("effects", traj), traj, "effect_drift")
    new_switch = time.perf_counter() - t
    print(f"\nexplorer, {n} trajectories x {length} tokens x {len(CHECKPOINTS)} checkpoints "
          f"({n * length * len(CHECKPOINTS):,} token rows):")
    print(f"  open:   whole tables {old_open:6.2f} s, +{old_mem / 2**20:6.0f} MB | view {new_open:6.2f} s, "
          f"+{new_mem / 2**20:5.0f} MB | {old_open / new_open:5.1f}x faster")
    print(f"  switch: whole tables {old_switch:6.2f} s | view {new_switch:6.2f} s | {old_switch / new_switch:5.1f}x")


SEVEN = [("base", 0), *[(f"checkpoint-{40 * i}", 40 * i) for i in range(1, 7)]]


def _switch(view: AnalysisView, traj: str, windowed: bool, width: int = 80) -> tuple[float, int]:
    """Seconds from a trajectory picked to its heatmap's JSON, and that JSON's size: the page's path, uncached."""
    t = time.perf_counter()
    if windowed:
        m = explore.token_matrix(view.rows("tokens", traj), view.rows("effects", traj), traj, "effect_drift",
                                 hover=False)
        shown = m.positions[:width]
        rows = view.rows("tokens", traj, positions=(shown[0], shown[-1]), top_k=True)
        fig = charts.token_heatmap(explore.window(m, shown[0], width, rows), minimap=explore.minimap(m))
    else:
        m = explore.token_matrix(view.rows("tokens", traj, top_k=True), view.rows("effects", traj), traj,
                                 "effect_drift")
        fig = charts.token_heatmap(m)
    size = len(fig.to_json())
    return time.perf_counter() - t, size


def test_long_cot_window_vs_full_width(size, tmp_path):
    n, length = size((50, 4096), (5, 600))
    out = _analysis(n, length, np.random.default_rng(0), SEVEN).save(tmp_path / "long")
    view = AnalysisView.open(out)
    _switch(view, "t00000", True)  # warm imports and the parquet metadata
    _switch(view, "t00000", False)
    picks = [f"t{i:05d}" for i in (1, 2, 3)]  # each trajectory once per way: nothing cached between them
    full_s, full_b = np.mean([_switch(view, t, windowed=False) for t in picks], axis=0)
    print(f"\nswitch to a {length:,}-token trajectory x {len(SEVEN)} checkpoints ({n} trajectories){size.header()}:")
    print(f"  full-width heatmap {full_s:6.2f} s, {full_b / 2**20:6.2f} MB of figure JSON")
    for width in (80, 400):
        win_s, win_b = np.mean([_switch(view, t, True, width) for t in picks[::-1]], axis=0)
        print(f"  {f'{width}-token window':18s} {win_s:6.2f} s, {win_b / 2**20:6.2f} MB (window + minimap) | "
              f"{full_s / win_s:5.1f}x faster, {full_b / win_b:5.1f}x smaller")
    assert win_b < full_b
