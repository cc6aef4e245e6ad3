"""The app's pages in one place: ``app.py`` routes with them, pages link to each other with them."""

from __future__ import annotations

import streamlit as st

from workbench.shipped import shipped

PAGES = shipped("pages")  # the checkout's pages/, or an installed copy's workbench/pages/


def home():
    return st.Page(PAGES / "home.py", title="Home", icon=":material/home:", default=True)


def checkpoints():
    return st.Page(PAGES / "checkpoints.py", title="Checkpoints", icon=":material/model_training:")


def explorer():
    return st.Page(PAGES / "explorer.py", title="Drift explorer", icon=":material/stacked_line_chart:")


def perturbation():
    return st.Page(PAGES / "perturbation.py", title="Perturbation lab", icon=":material/swap_horiz:")


def watch():
    return st.Page(PAGES / "watch.py", title="Watch", icon=":material/monitor_heart:")


def graph_editor():
    return st.Page(PAGES / "graph_editor.py", title="Concept graph", icon=":material/hub:")


def counterfactuals():
    return st.Page(PAGES / "counterfactuals.py", title="Counterfactuals", icon=":material/alt_route:")


def curation():
    return st.Page(PAGES / "curation.py", title="Curation", icon=":material/rule:")


def runs():
    return st.Page(PAGES / "runs.py", title="CPO runs", icon=":material/rocket_launch:")


def navigation() -> dict:
    return {"Workbench": [home()], "Drift": [checkpoints(), explorer(), perturbation(), watch()],
            "Repair": [graph_editor(), counterfactuals(), curation(), runs()]}
