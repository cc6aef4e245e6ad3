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
ANNOTATOR = "annotator"  # curation: the annotator's name, set once per session


def init() -> None:
    st.session_state.setdefault(WORLD_PATH, os.environ.get("WORKBENCH_WORLD") or str(world.SAMPLE_WORLD))
    st.session_state.setdefault(WORKSPACE_PATH, os.environ.get(ENV_VAR) or "")
    st.session_state.setdefault(PRESENTATION, False)
    st.session_state.setdefault(ANNOTATOR, "")


def world_path() -> Path:
    return Path(st.session_state[WORLD_PATH])
