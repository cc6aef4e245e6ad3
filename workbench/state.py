"""Session-state keys in one place; ``init()`` fills defaults so every page also runs on its own."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from core.io.roots import ENV_VAR
from core.workspace import plugins

WORLD_PATH = "world_path"
NEXT_WORLD = "_next_world"  # a world a page just created: the sidebar's picker opens it on the next run
WORKSPACE_PATH = "workspace_path"
PRESENTATION = "presentation_mode"
FIG_FORMAT = "figure_format"  # png | svg: what a chart's camera button downloads
ANALYSIS = "analysis_path"  # the analysis folder the explorer shows
TRAJECTORY = "trajectory_id"  # the trajectory open in the explorer (and offered to the perturbation lab)
DRIVER_IDS = "driver_trajectories"  # trajectories of the driver row picked in the overview (a filter)
DRIVER_NOTE = "driver_note"  # what that filter is, in words
EXPLORER_VIEW = "explorer_view"
# the trajectory view's heatmap window (workbench.heatmap_window): a long CoT is shown a window at a time
TRAJ_WINDOW = "traj_window"  # the window's first token position (its slider's key)
TRAJ_WINDOW_WIDTH = "traj_window_width"  # tokens per window (kept while a short CoT hides the picker)
TRAJ_WIDTH_PICK = "traj_window_width_pick"  # the width picker's own key: its value is kept in TRAJ_WINDOW_WIDTH
TRAJ_WINDOW_OF = "traj_window_of"  # the trajectory the window belongs to: another one starts at its start
TRAJ_FOCUS = "traj_focus"  # the position jumped to (outlined), or None
GRAPH_SEEN = "graph_seen_version"  # (graph key, version) this tab shows and edits: edits are based on it
GRAPH_SEARCH = "graph_search"
GRAPH_FLASH = "graph_flash"  # message to show after an edit's rerun
CF_LAST = "cf_last"  # the counterfactuals generated last in this tab, for the preview
RUN_DATA = "run_data_choice"  # CPO runs: the preference data chosen, kept across pages
ANNOTATOR = "annotator"  # curation: the annotator's name, set once per session
AUTH_OK = "auth_ok"  # this session gave the server's access token
OPEN_EXPLORER = "_open_explorer"  # set inside a jobs fragment: the next full run switches to the explorer
EXPLORER_ANALYSIS = "explorer_analysis"  # widget: the explorer's analysis picker (persisted as ANALYSIS)
EXPLORER_TRAJECTORY = "explorer_trajectory"  # widget: the explorer's trajectory picker (persisted as TRAJECTORY)
LAB_ANALYSIS = "lab_analysis"  # widget: the perturbation lab's analysis picker
LAB_TRAJECTORY = "lab_trajectory"  # widget: the perturbation lab's trajectory picker
LAB_RESULT = "lab_result"  # the last single swap: (traj_id, find, replace, mode, result table)
RUN_DATA_WIDGET = "run_data"  # widget: the preference data picker (its value kept under RUN_DATA)
RUN_NAME = "run_name"  # widget: the run name field, filled with a fresh default
RUN_NAME_FRESH = "_run_name_fresh"  # set by Launch: the next rerun fills the name field with a new default
RUN_SELECTED = "run_selected"  # widget: the run shown in the runs panel
RUNS_LIVE = "_runs_live"  # a run was running at the last redraw of the runs panel
CUR_LAST = "cur_last"  # curation: the last decision, shown under the buttons
CUR_LAST_ERROR = "cur_last_error"  # curation: why the last decision was refused
CUR_K = "cur_k"  # widget: decisions needed per item
CUR_IMPORTED = "cur_imported"  # curation: what the last import kept, shown after its rerun
SCORE_OUTS = "_score_outs"  # checkpoints: the output folder named for each scoring request (the command shows it)
WATCH = "watch_path"  # the watch folder the Watch page shows (kept across pages)
WATCH_PICK = "watch_pick"  # widget: the Watch page's picker (its value kept under WATCH)
WATCH_WORLD_NAME = "watch_world_name"  # widget: the name of the world a finished watch becomes


# what a session chose inside the world it had open: picking another world in the sidebar drops them, so that no
# page shows the previous world's analysis, trajectory or preview under the new world's name (the explorer kept
# the last analysis opened, and titled its charts with the new world)
WORLD_CHOICES = (ANALYSIS, EXPLORER_ANALYSIS, LAB_ANALYSIS, TRAJECTORY, EXPLORER_TRAJECTORY, LAB_TRAJECTORY,
                 DRIVER_IDS, DRIVER_NOTE, CF_LAST, LAB_RESULT)


def leave_world() -> None:
    # and the Checkpoints page's answer template and format, which start as the world's own (world.json's answer_format)
    for key in (*WORLD_CHOICES, setting("ck", "template"), setting("ck", "answer_format")):
        st.session_state.pop(key, None)


def running_flag(kind: str) -> str:
    """A job of ``kind`` was running at the last redraw of its jobs panel (its end reruns the page)."""
    return f"_running_{kind}"


def setting(form: str, field: str) -> str:
    """Widget: config field ``field`` of the settings form ``form`` (``workbench.forms``): ``ck_top_k``,
    ``run_max_steps`` (``ck``: the Checkpoints page's analysis settings; ``run``: the runs page's launch form)."""
    return f"{form}_{field}"


def last_found(widget_key: str) -> str:
    """The folder last picked from the 'found under the data roots' list beside the text field ``widget_key``."""
    return f"{widget_key}_last_found"


def cur_edit(item_id: int) -> str:
    """Widget: the in-place edit of curation item ``item_id``."""
    return f"cur_edit_{item_id}"


def cur_note(item_id: int) -> str:
    """Widget: the note beside curation item ``item_id``'s decision."""
    return f"cur_note_{item_id}"


def init() -> None:
    if WORLD_PATH not in st.session_state:  # `workbench app` names the world; a page on its own opens a provided one
        st.session_state[WORLD_PATH] = os.environ.get("WORKBENCH_WORLD") or _provided_world()
    st.session_state.setdefault(WORKSPACE_PATH, os.environ.get(ENV_VAR) or "")
    st.session_state.setdefault(PRESENTATION, False)
    st.session_state.setdefault(FIG_FORMAT, "png")
    for key in (GRAPH_SEEN, GRAPH_FLASH, CF_LAST):
        st.session_state.setdefault(key, None)
    st.session_state.setdefault(GRAPH_SEARCH, "")
    st.session_state.setdefault(ANNOTATOR, "")
    st.session_state.setdefault(TRAJ_WINDOW_WIDTH, 80)  # about the most token labels that fit the chart's width


def _provided_world() -> str:
    """The first world an installed package provides (the demo's), or "" (the page then says no world is open)."""
    return str(next(iter(plugins.provided_worlds().values()), ""))


def world_picker(world: str) -> str:
    """Widget: the sidebar's world picker while ``world`` is open (a new widget once another world is)."""
    return f"world_picker_{world}"


def world_path() -> Path:
    return Path(st.session_state[WORLD_PATH])


def persist(widget_key: str, value_key: str, options: list | None = None) -> None:
    """Call before a widget: Streamlit drops a widget's state when another page is shown, so its value is
    kept under ``value_key`` too (set it after the widget) and restored here; invalid values are dropped."""
    value = st.session_state.get(widget_key, st.session_state.get(value_key))
    if options is not None and value not in options:
        value = options[0] if options else None
    st.session_state[widget_key] = value
