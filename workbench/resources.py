"""Cached access to core for the pages: tables in ``st.cache_data``, heavy objects in ``st.cache_resource``.

Keys include the world's fingerprint, so a rebuilt world is read afresh. Modules that bring torch or take a second
to import (series, analysis, explore, drift, charts) are imported inside the functions that need them, so that
importing this module (every page does) stays light: pages that show tables from the database never load torch.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx
import streamlit as st

from core.cpo import train as cpo
from core.graph import concepts
from core.graph.store import GraphStore
from core.io.trajectories import read_jsonl
from core.models import device
from core.workspace import world
from core.workspace.workspace import Workspace
from workbench import graphview

if TYPE_CHECKING:
    from core.models.series import ModelSeries


@st.cache_data(show_spinner="Reading the world…")
def world_summary(path: str, fingerprint: str) -> dict:
    return world.load_world(path).summary()


@st.cache_data
def world_metrics(path: str, fingerprint: str) -> list[dict]:
    return world.load_world(path).metrics()


def load_world(path: str) -> world.World:
    """The world at ``path``, read again when its world.json changed (an answer format or held-out set added
    while the app runs is seen on the next page, not at the next restart)."""
    try:
        stamp = (Path(path) / world.MANIFEST).stat().st_mtime_ns
    except OSError:
        stamp = None  # no manifest: load_world names what is missing
    return _load_world(path, stamp)


@st.cache_resource(max_entries=16)
def _load_world(path: str, stamp: int | None) -> world.World:
    return world.load_world(path)


@st.cache_resource(show_spinner="Checking the compute device…")
def device_info() -> device.DeviceInfo:
    return device.detect()


@st.cache_resource
def workspace(path: str) -> Workspace:
    return Workspace.open(path or None)


@st.cache_resource(show_spinner="Reading the analysis…", max_entries=4)
def load_analysis(path: str, stamp: str):
    """An analysis's tables, shared read-only by every session (``stamp`` changes when it is rewritten)."""
    from core.drift.analysis import Analysis

    return Analysis.load(path)


@st.cache_resource(show_spinner="Reading trajectories…", max_entries=8)
def records(path: str, limit: int | None, stamp: str, roots: tuple[str, ...] | None = None) -> list[dict]:
    """Trajectories of a JSONL file, shared read-only by every session (no copy per rerun); ``roots``: the
    data roots its images must lie in (a file the page opened: its image paths are typed paths too)."""
    return read_jsonl(path, limit, image_roots=None if roots is None else list(roots))


@st.cache_resource(show_spinner="Opening the analysis…", max_entries=8)
def analysis_view(path: str, stamp: str):
    """An analysis's config and summary tables (small whatever its size), shared read-only by every session;
    per-trajectory rows are read on demand (``trajectory_rows``)."""
    from core.drift.analysis import AnalysisView

    return AnalysisView.open(path)


@st.cache_data(max_entries=64)
def trajectory_rows(path: str, stamp: str, table: str, traj_id: str, top_k: bool = False):
    """One trajectory's rows of ``tokens``, ``beliefs`` or ``effects`` (a filtered parquet read); the top-k
    lists only with ``top_k`` (the token table the user opens), never for the heatmap."""
    return analysis_view(path, stamp).rows(table, traj_id, top_k=top_k)


@st.cache_resource(show_spinner="Reading trajectories…", max_entries=4)
def analysis_records(path: str, stamp: str) -> list[dict]:
    """The trajectories an analysis scored, from its own folder."""
    return analysis_view(path, stamp).records()


@st.cache_data(max_entries=8)
def trajectory_table(path: str, stamp: str):
    return analysis_view(path, stamp).trajectories()


@st.cache_data(max_entries=8)
def category_accuracy(path: str, stamp: str):
    return analysis_view(path, stamp).category_accuracy()


@st.cache_resource(max_entries=4)
def graph_file(path: str, stamp: str):
    """A concept graph as its file holds it (what an analysis was scored with)."""
    return concepts.load_graph(path)


@st.cache_resource(show_spinner="Loading the checkpoint series…", max_entries=1)
def series(base: str, checkpoints, device: str | None, dtype: str | None, base_names: tuple[str, ...],
           vision=None):
    """One loaded series at a time (the perturbation lab's); adapters switch, weights load once. ``vision``: a
    vision-language series' pixel limits (``core.models.vision.VisionConfig``), as the analysis had them."""
    from core.models.series import load_series

    return load_series(base, list(checkpoints) if isinstance(checkpoints, tuple) else checkpoints,
                       device=device, dtype=dtype, base_names=list(base_names), vision=vision)


def file_stamp(path: str) -> str:
    """A cache key part that changes when the file changes."""
    try:
        st_ = os.stat(path)
        return f"{st_.st_size}:{st_.st_mtime_ns}"
    except OSError:
        return "missing"


@st.cache_resource
def graph_store(workspace_path: str, graph_path: str) -> GraphStore:
    """The versioned concept graph of a world (its file becomes version 1 the first time)."""
    return GraphStore.open(workspace(workspace_path).store, graph_path)


def concept_graph(workspace_path: str, graph_path: str) -> tuple[nx.DiGraph, int]:
    """The world's concept graph as edited in the workspace (its current version), and that version.

    Pages that use the graph (counterfactuals, the perturbation lab's ``concepts.synonym_sets``) read it
    here rather than from the world's file, so that they see the researchers' edits."""
    gs = graph_store(workspace_path, graph_path)
    version = gs.head()
    return gs.graph(version), version


def dataset(path: str, name: str) -> list[dict]:
    """A world's dataset by name: the shared, read-only record list of ``records``, keyed by the file's stamp."""
    file = str(load_world(path).dataset_path(name))
    return records(file, None, file_stamp(file))


def model_series(path: str, fingerprint: str) -> ModelSeries:
    """A world's base model with its checkpoint series, loaded once and shared by every session."""
    w = world.load_world(path)
    arg = w.checkpoints_arg
    return series(str(w.base_model_dir), tuple(arg) if isinstance(arg, list) else arg, None, None,
                  (w.manifest.get("base_model_name", w.base_model_dir.name),))


@st.cache_data(max_entries=32)
def graph_html(_gs: GraphStore, db: str, key: str, version: int, highlight: str | None) -> str:
    """The pyvis page of one graph version (versions never change: database, graph and version identify it)."""
    return graphview.graph_html(_gs.graph(version), highlight)


# The explorer's per-trajectory figures, built once per (analysis, trajectory, setting) and shared by every
# session: switching back and forth redraws without recomputing. Read-only (ui.figure copies before styling).
@st.cache_resource(max_entries=64)
def token_matrix(path: str, stamp: str, traj_id: str, metric: str, include_prompt: bool):
    """The whole trajectory's matrix without hover text, from its rows without the top-k columns."""
    from core.drift import explore

    tokens, effects = (trajectory_rows(path, stamp, t, traj_id) for t in ("tokens", "effects"))
    return explore.token_matrix(tokens, effects, traj_id, metric, include_prompt, hover=False)


@st.cache_data(max_entries=64)
def window_rows(path: str, stamp: str, traj_id: str, first: int, last: int):
    """The token rows of positions ``first``..``last`` of one trajectory, with their top-k lists (hover text):
    the only read of the top-k columns the trajectory view makes."""
    return analysis_view(path, stamp).rows("tokens", traj_id, positions=(first, last), top_k=True)


@st.cache_resource(max_entries=256)
def token_heatmap(path: str, stamp: str, traj_id: str, metric: str, include_prompt: bool, start: int, width: int,
                  focus: int | None = None):
    """The heatmap of the ``width`` columns from position ``start``; the minimap when the CoT is longer."""
    from core.drift import explore
    from workbench import charts

    m = token_matrix(path, stamp, traj_id, metric, include_prompt)
    c0 = explore.window_column(m.positions, start, width)
    shown = m.positions[c0: c0 + width]
    w = explore.window(m, shown[0], width, window_rows(path, stamp, traj_id, shown[0], shown[-1]))
    return charts.token_heatmap(w, minimap=explore.minimap(m) if m.width > width else None, focus=focus,
                                branches=analysis_branches(path, stamp))


@st.cache_resource(max_entries=256)
def belief_lines(path: str, stamp: str, traj_id: str):
    from core.drift import explore
    from workbench import charts

    return charts.belief_lines(explore.belief_path(trajectory_rows(path, stamp, "beliefs", traj_id), traj_id),
                               branches=analysis_branches(path, stamp))


def analysis_branches(path: str, stamp: str) -> dict:
    """The CPO runs among an analysis's checkpoints (``core.models.branches.run_branches``): drawn as branches."""
    from core.models.branches import run_branches

    return run_branches(analysis_view(path, stamp).config.checkpoints)


@st.cache_resource(max_entries=256)
def answer_distribution(path: str, stamp: str, traj_id: str, checkpoint: str):
    from core.drift import explore
    from workbench import charts

    belief = explore.belief_path(trajectory_rows(path, stamp, "beliefs", traj_id), traj_id)
    return charts.answer_distribution(belief, checkpoint, explore.top_labels(belief))


@st.cache_data(show_spinner="Comparing the run with its start…", max_entries=16)
def branch_comparison(path: str, stamp: str, start: str, repaired: str):
    """``core.models.branches.compare`` of a CPO run and its start, reading those two checkpoints' rows only."""
    from core.models import branches

    view = analysis_view(path, stamp)
    tokens = view.checkpoint_rows("tokens", [start, repaired], branches.TOKEN_COLUMNS)
    beliefs = view.checkpoint_rows("beliefs", [start, repaired], branches.BELIEF_COLUMNS)
    return branches.compare(tokens, beliefs, start, repaired, from_start=branches.measured_from_start(view.changes))


@st.cache_resource(max_entries=256)
def start_vs_repaired(path: str, stamp: str, traj_id: str, start: str, repaired: str):
    """One trajectory's start vs repaired figure (``charts.start_vs_repaired``), shared read-only."""
    from core.models import branches
    from workbench import charts

    view = analysis_view(path, stamp)
    pair = branches.trajectory_pair(trajectory_rows(path, stamp, "tokens", traj_id),
                                    trajectory_rows(path, stamp, "beliefs", traj_id), start, repaired,
                                    branches.measured_from_start(view.changes))
    return charts.start_vs_repaired(pair, start, repaired)


@st.cache_data(show_spinner="Checking the preference data…", max_entries=16)
def preflight(cfg):
    """``core.cpo.train.preflight`` of a run's config (cached by the config's fields), without the pairs it read:
    ``st.cache_data`` copies its value on every rerun, and the page needs only the counts and messages."""
    return dataclasses.replace(cpo.preflight(cfg), records=[], encoded=[])


@st.cache_resource(show_spinner="Building the world's preference set…")
def world_preferences(world_root: str, out: str) -> str:
    """A world's own preference file (its plug-in's ``preference_set``, e.g. the sample world's pairs), built once."""
    world = load_world(world_root)
    return world.plugin.preference_set(world, out)
