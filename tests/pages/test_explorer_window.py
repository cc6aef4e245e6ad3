"""AppTest: the explorer's trajectory view on a long CoT, drawn a window at a time.

The analysis is the sample world's, with its most drifted trajectory made 32 times longer (its CoT rows
repeated at later positions, 704 tokens) and one short trajectory beside it."""

import dataclasses

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.drift.analysis import LAZY_COLUMNS, Analysis
from core.io.trajectories import read_jsonl
from core.workspace.world import load_world
from tests.conftest import ROOT
from workbench import state

REPEATS = 32


def _longer(df: pd.DataFrame, traj: str, length: int) -> pd.DataFrame:
    """``traj``'s rows at positions >= 0 repeated REPEATS times, each copy ``length`` positions later."""
    own = df[df["traj_id"] == traj]
    cot = own[own["position"] >= 0]
    copies = [cot.assign(position=cot["position"] + k * length) for k in range(1, REPEATS)]
    if "next_position" in cot:
        copies = [c.assign(next_position=c["position"] + 1) for c in copies]
    return pd.concat([df, *copies], ignore_index=True)


@pytest.fixture(scope="module")
def long_workspace(sample_world, tmp_path_factory):
    a = Analysis.load(load_world(sample_world).analysis_dir)
    records = read_jsonl(a.config.data, a.config.limit)
    ranking = pd.read_parquet(load_world(sample_world).analysis_dir / "trajectories.parquet") \
        if (load_world(sample_world).analysis_dir / "trajectories.parquet").is_file() else None
    long_id = ranking.iloc[0]["traj_id"] if ranking is not None else a.tokens["traj_id"].iloc[0]
    short_id = next(t for t in a.tokens["traj_id"].unique() if t != long_id)
    keep = {long_id, short_id}
    length = int(a.tokens.loc[a.tokens["traj_id"] == long_id, "position"].max()) + 1
    tables = {name: _longer(getattr(a, name)[getattr(a, name)["traj_id"].isin(keep)], long_id, length)
              for name in ("tokens", "beliefs", "effects")}
    texts = [dict(r, completion=r["completion"] * (REPEATS if r["id"] == long_id else 1))
             for r in records if r["id"] in keep]
    ws = tmp_path_factory.mktemp("ws")
    dataclasses.replace(a, **tables, records=texts).save(ws / "analyses" / "long-cot")
    return ws, long_id, short_id, length * REPEATS


def test_a_long_cot_is_shown_a_window_at_a_time(sample_world, long_workspace, monkeypatch):
    ws, long_id, short_id, n = long_workspace
    reads = []
    real = pd.read_parquet
    monkeypatch.setattr(pd, "read_parquet", lambda path, *x, **k: reads.append((str(path), k)) or real(path, *x, **k))
    at = AppTest.from_file(str(ROOT / "pages" / "explorer.py"), default_timeout=120)
    at.session_state[state.WORLD_PATH] = str(sample_world)
    at.session_state[state.WORKSPACE_PATH] = str(ws)
    at.session_state[state.EXPLORER_VIEW] = "Trajectory"
    at.session_state["explorer_trajectory"] = long_id
    at.run()
    assert not at.exception
    assert "long-cot" in at.selectbox(key="explorer_analysis").value
    window = at.slider(key=state.TRAJ_WINDOW)  # the report's tokens first (negative positions), then the CoT
    assert window.value == window.min < 0 and window.max == n - 80  # the last full window
    spec = at.get("plotly_chart")[0].proto.spec
    assert "whole CoT" in spec and len(spec) < 400_000  # the strip; one window's cells, not 704 columns
    assert any(c.value.startswith(f"Tokens {int(window.min)} to ") and f"of {int(window.min)} to {n - 1}." in c.value
               for c in at.caption)
    # the top-k lists were read for the window's rows only
    topk = [k for p, k in reads if p.endswith("tokens.parquet") and (k.get("columns") is None
                                                                       or set(LAZY_COLUMNS) & set(k["columns"]))]
    assert topk and all(any(f[0] == "position" for f in k["filters"]) for k in topk)

    at.toggle(key="traj_report").set_value(False).run()  # the CoT only: positions 0 ... n - 1
    assert not at.exception and at.slider(key=state.TRAJ_WINDOW).value == 0
    at.button(key="traj_window_next").click().run()
    assert not at.exception and at.slider(key=state.TRAJ_WINDOW).value == 80
    at.button(key="traj_window_prev").click().run()
    assert at.slider(key=state.TRAJ_WINDOW).value == 0
    at.slider(key=state.TRAJ_WINDOW).set_value(300).run()
    assert any(c.value.startswith("Tokens 300 to 379") for c in at.caption)

    at.button(key="traj_window_largest").click().run()
    focus = at.session_state[state.TRAJ_FOCUS]
    start = at.slider(key=state.TRAJ_WINDOW).value
    assert not at.exception and focus is not None and start <= focus < start + 80
    at.button(key="traj_window_detrimental").click().run()
    first = at.session_state[state.TRAJ_FOCUS]
    at.button(key="traj_window_detrimental").click().run()
    second = at.session_state[state.TRAJ_FOCUS]
    assert not at.exception and first != second  # the repeated CoT has its detrimental positions many times
    start = at.slider(key=state.TRAJ_WINDOW).value
    assert start <= second < start + 80

    at.select_slider(key="traj_window_width_pick").set_value(40).run()
    assert not at.exception and at.slider(key=state.TRAJ_WINDOW).max == n - 40
    at.selectbox(key="traj_metric").set_value("kl_base").run()
    assert not at.exception and at.slider(key=state.TRAJ_WINDOW).value == start  # the same tokens, another measure

    at.selectbox(key="explorer_trajectory").set_value(short_id).run()
    assert not at.exception and not [s for s in at.slider if s.key == state.TRAJ_WINDOW]  # short: all at once
    at.selectbox(key="explorer_trajectory").set_value(long_id).run()
    assert not at.exception and at.slider(key=state.TRAJ_WINDOW).value == 0  # another trajectory: from its start
    assert at.select_slider(key="traj_window_width_pick").value == 40  # the width was kept
    at.toggle(key="traj_token_table").set_value(True).run()  # asked for: every row, with the top-k lists
    table = next(d.value for d in at.dataframe if "kl_base" in d.value.columns)
    assert not at.exception and table["position"].max() == n - 1 and "top_tokens" in table.columns
