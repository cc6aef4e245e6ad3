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
