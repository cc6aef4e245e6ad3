"""Cached access to core for the pages: tables in ``st.cache_data``, heavy objects in ``st.cache_resource``.

Keys include the world's fingerprint, so a rebuilt world is read afresh.
"""

from __future__ import annotations

import streamlit as st

from core import device, world
from core.workspace import Workspace


@st.cache_data(show_spinner="Reading the world…")
def world_summary(path: str, fingerprint: str) -> dict:
    return world.load_world(path).summary()


@st.cache_data
def world_metrics(path: str, fingerprint: str) -> list[dict]:
    return world.load_world(path).metrics()


@st.cache_resource
def load_world(path: str) -> world.World:
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
    from core.analysis import Analysis

    return Analysis.load(path)


@st.cache_resource(max_entries=8)
def records(path: str, limit: int | None, stamp: str) -> list[dict]:
    from core.trajectories import read_jsonl

    return read_jsonl(path, limit)


@st.cache_data(max_entries=8)
def trajectory_table(path: str, stamp: str):
    from core import explore

    a = load_analysis(path, stamp)
    return explore.trajectory_table(a.beliefs, a.effects, records(a.config.data, a.config.limit, stamp))


@st.cache_data(max_entries=8)
def category_accuracy(path: str, stamp: str):
    from core import drift

    return drift.category_accuracy(load_analysis(path, stamp).beliefs)


@st.cache_resource(max_entries=4)
def concept_graph(path: str, stamp: str):
    from core import concepts

    return concepts.load_graph(path)


@st.cache_resource(show_spinner="Loading the checkpoint series…", max_entries=1)
def series(base: str, checkpoints, device: str | None, dtype: str | None, base_names: tuple[str, ...]):
    """One loaded series at a time (the perturbation lab's); adapters switch, weights load once."""
    from core.series import load_series

    return load_series(base, list(checkpoints) if isinstance(checkpoints, tuple) else checkpoints,
                       device=device, dtype=dtype, base_names=list(base_names))


def file_stamp(path: str) -> str:
    """A cache key part that changes when the file changes."""
    import os

    try:
        st_ = os.stat(path)
        return f"{st_.st_size}:{st_.st_mtime_ns}"
    except OSError:
        return "missing"
