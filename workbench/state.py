"""Session-state keys in one place; ``init()`` fills defaults so every page also runs on its own."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from core import world
from core.workspace import ENV_VAR

WORLD_PATH = "world_path"
WORKSPACE_PATH = "workspace_path"
PRESENTATION = "presentation_mode"
GRAPH_SEEN = "graph_seen_version"  # (graph key, version) this tab shows and edits: edits are based on it
GRAPH_SEARCH = "graph_search"
GRAPH_FLASH = "graph_flash"  # message to show after an edit's rerun
CF_LAST = "cf_last"  # the counterfactuals generated last in this tab, for the preview
CF_STOP = "cf_stop"  # set by the Stop button: the running batch ends after the current trajectory
CF_PROGRESS = "cf_progress"  # the last batch's progress, shown after it ends or is stopped


def init() -> None:
    st.session_state.setdefault(WORLD_PATH, os.environ.get("WORKBENCH_WORLD") or str(world.SAMPLE_WORLD))
    st.session_state.setdefault(WORKSPACE_PATH, os.environ.get(ENV_VAR) or "")
    st.session_state.setdefault(PRESENTATION, False)
    for key in (GRAPH_SEEN, GRAPH_FLASH, CF_LAST, CF_PROGRESS):
        st.session_state.setdefault(key, None)
    st.session_state.setdefault(GRAPH_SEARCH, "")
    st.session_state.setdefault(CF_STOP, False)


def world_path() -> Path:
    return Path(st.session_state[WORLD_PATH])
