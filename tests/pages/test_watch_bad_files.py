"""The Watch page on a watch folder whose small JSON files hold values of the wrong kind (a hand-edited or
foreign trainer.json, status.json, stop.json, record.json, alarms.jsonl or a checkpoint's trainer_state.json):
no traceback; each bad field is left out and named in a warning (file and field)."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from core.errors import InputError
from core.watch import views
from tests.conftest import ROOT
from workbench import state

GOOD = {"watch.json": {"format": "cot-drift-watch", "source": "callback"},
        "trainer.json": {"status": "running", "global_step": 3, "max_steps": 10, "log_history": [{"step": 1, "loss": 1.0}]},
        "status.json": {"state": "waiting", "pid": 1}}
BAD = {  # file -> content; the warning names the file and the field
    "trainer log_history": ({"trainer.json": {"status": "running", "log_history": 5}}, "trainer.json: field 'log_history'"),
    "trainer status": ({"trainer.json": {"status": ["running"]}}, "trainer.json: field 'status'"),
    "trainer not an object": ({"trainer.json": "{broken"}, "trainer.json: not a JSON object"),
    "scoring not an object": ({"status.json": {"state": "scoring", "scoring": "abc", "pid": 1}}, "status.json: field 'scoring'"),
    "scoring without a step": ({"status.json": {"state": "scoring", "scoring": {"x": 1}, "pid": 1}},
                               "status.json: field 'scoring'"),
    "scorer state": ({"status.json": {"state": ["x"]}}, "status.json: field 'state'"),
    "pid too large": ({"status.json": {"state": "scoring", "pid": 10**30}}, None),  # a pid no process has: died
    "stop by": ({"stop.json": {"by": 5}}, "stop.json: field 'by'"),
    "record bytes": ({"checkpoints/checkpoint-2/record.json": {"step": 2, "bytes": "x"}}, "record.json: field 'bytes'"),
    "record step": ({"checkpoints/checkpoint-2/record.json": {"step": "x"},
                     "checkpoints/checkpoint-3/record.json": {"step": 3}}, "record.json: field 'step'"),
    "record recorded_at": ({"checkpoints/checkpoint-2/record.json": {"step": 2, "recorded_at": "y"}},
                           "record.json: field 'recorded_at'"),
    "alarm evidence": ({"alarms.jsonl": [{"step": 2, "rule": "r", "message": "m", "evidence": [1]}]},
                       "alarms.jsonl, alarm 1: field 'evidence'"),
    "alarm rule": ({"alarms.jsonl": [{"step": 2, "rule": 5, "evidence": {"tokens": "x", "trajectories": "abc"}}]},
                   "alarms.jsonl, alarm 1: field 'rule'"),
    # null is as if absent (each was a TypeError or AttributeError past the kind check, which let None through)
    "scoring null": ({"status.json": {"state": "waiting", "scoring": None, "pid": None}}, None),
    "record nulls": ({"checkpoints/checkpoint-2/record.json": {"step": 2, "bytes": None, "recorded_at": None},
                      "checkpoints/checkpoint-3/record.json": {"step": None, "recorded_at": None}}, None),
    "checkpoint trainer_state": ({"trainer.json": {"status": "running"},
                                  "checkpoints/checkpoint-2/trainer_state.json": {"log_history": 5}},
                                 "trainer_state.json: field 'log_history'"),
}


def watch_folder(root, files: dict):
    out = root / "watch"
    for rel, data in {**GOOD, **files}.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".jsonl"):
            path.write_text("".join(json.dumps(d) + "\n" for d in data))
        else:
            path.write_text(data if isinstance(data, str) else json.dumps(data))
    return out


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_field_is_left_out_and_named_not_a_traceback(tmp_path, case):
    files, said = BAD[case]
    ws = tmp_path / "ws"
    views.register(ws, watch_folder(tmp_path, files))
    at = AppTest.from_file(str(ROOT / "pages" / "watch.py"), default_timeout=60)
    at.session_state[state.WORKSPACE_PATH] = str(ws)
    at.run()
    assert not at.exception, at.exception[0].value
    if said:
        warnings = [w.value for w in at.warning]
        assert any(said in w and "left out" in w for w in warnings), warnings


def test_a_hand_edited_registry_entry_is_read_as_far_as_it_can_be(tmp_path):
    """A registry entry whose time is not a number sorts as oldest, one whose folder is not a path is skipped,
    and a folder registered twice is listed once (it was a TypeError in the page's first line)."""
    ws = tmp_path / "ws"
    views.register(ws, watch_folder(tmp_path, {}))
    (ws / "watches" / "odd.json").write_text(json.dumps({"out": str(tmp_path / "watch"), "registered": "yesterday"}))
    (ws / "watches" / "odder.json").write_text(json.dumps({"out": 5}))
    (ws / "watches" / "null.json").write_text(json.dumps({"out": str(tmp_path / "watch"), "registered": None}))
    assert views.list_watches(ws) == [tmp_path / "watch"]


def test_an_alarm_whose_evidence_names_no_list_of_trajectories_opens_the_explorer_unfiltered(tmp_path):
    """evidence.trajectories a string (each letter was taken for a trajectory id) or a number (a TypeError)."""
    for listed in ("abc", 7):
        alarm = {"step": 2, "rule": "belief_fall", "message": "m", "evidence": {"trajectories": listed}}
        ws = tmp_path / f"ws-{listed}"
        views.register(ws, watch_folder(tmp_path / str(listed), {"alarms.jsonl": [alarm], "analysis/config.json": {}}))
        at = AppTest.from_file(str(ROOT / "pages" / "watch.py"), default_timeout=60)
        at.session_state[state.WORKSPACE_PATH] = str(ws)
        at.run()
        at.button(key="alarm-open-0").click().run()
        assert not at.exception, at.exception[0].value
        assert at.session_state[state.DRIVER_IDS] is None


def test_open_as_world_names_a_config_without_its_base(tmp_path):
    out = watch_folder(tmp_path, {"trainer.json": {"status": "ended"}, "config.json": {"world": 5},
                                  "analysis/config.json": {}})
    with pytest.raises(InputError, match=r"watch/config\.json: field 'base': expected a path"):
        views.open_as_world(out, tmp_path / "ws", "w")
    assert not (tmp_path / "ws" / "worlds").exists()
