"""AppTest for the CPO runs page: the launch form on the sample world, and a real short run on the quick
world launched, watched to the end, evaluated and compared."""

import time

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from workbench import state


def page(world, workspace) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "runs.py"), default_timeout=300)
    at.session_state[state.WORLD_PATH] = str(world)
    at.session_state[state.WORKSPACE_PATH] = str(workspace)
    return at


def test_launch_form_defaults_to_the_drifted_checkpoint(sample_world, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(tmp_path))
    at = page(sample_world, tmp_path / "ws")
    at.run()
    assert not at.exception and not at.error
    assert at.selectbox(key="run_start").value == "checkpoint-160"  # the world's least accurate checkpoint
    command = at.code[0].value
    assert command.startswith("workbench train --config ") and f"--evaluate {sample_world}" in command
    assert any("Pre-flight:" in c.value and "pairs" in c.value for c in at.caption)
    at.selectbox(key="run_data").set_value("a TRL preference file").run()
    at.text_input(key="run_file").input(str(tmp_path / "missing.jsonl")).run()
    assert not at.exception and any("missing.jsonl" in e.value for e in at.error)
    assert not [b for b in at.button if b.key == "run_launch"]


@pytest.mark.slow
def test_a_short_run_finishes_is_evaluated_and_compared(quick_world, tmp_path):
    at = page(quick_world, tmp_path / "ws")
    at.run()
    at.selectbox(key="run_start").set_value("checkpoint-4")
    at.number_input(key="run_steps").set_value(2)
    at.number_input(key="run_batch").set_value(4)
    at.text_input(key="run_name").input("cpo-quick").run()
    assert not at.exception and not at.error
    at.button(key="run_launch").click().run()
    assert not at.exception
    deadline = time.monotonic() + 300
    while True:
        at.run()
        status = " ".join(m.value for m in at.markdown)
        if "cpo-quick: running" not in status and "cpo-quick:" in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert "**cpo-quick: done**" in status, [c.value for c in at.code]
    assert len(at.get("plotly_chart")) >= 1  # the run's curves
    table = at.dataframe[-1].value
    assert list(table["run"]) == ["before (start checkpoint)", "cpo-quick"]
    assert 0 <= table.iloc[1]["accuracy"] <= 1 and "flip_rate" in table.columns
