"""The explorer's checkpoints x tokens heatmap of one trajectory, a window of tokens at a time.

A CoT longer than the window (a setting, 40-400 tokens, 80 by default: each one labelled) is drawn one window at a time with every token
labelled, under a thin strip of its whole length (``core.drift.explore.minimap``) on which the window is marked;
a slider, previous / next, "largest drift" and "next detrimental" move the window. The browser receives
only the window's cells and the downsampled strip, and the top-k lists of the hover text are read for the
window's rows only (``resources.window_rows``).

    heatmap_window.show(path, stamp, "test-00012", "effect_drift", include_prompt=True)
"""

from __future__ import annotations

import streamlit as st

from core.drift import explore
from workbench import charts, resources, state, ui

WIDTHS = (40, 80, 150, 200, 300, 400)  # 80: every token labelled at the page's width; wider: every k-th


def show(path: str, stamp: str, traj_id: str, metric: str, include_prompt: bool) -> None:
    """The heatmap of ``traj_id`` coloured by ``metric``, with the window controls when the CoT needs them."""
    m = resources.token_matrix(path, stamp, traj_id, metric, include_prompt)
    state.persist(state.TRAJ_WIDTH_PICK, state.TRAJ_WINDOW_WIDTH, list(WIDTHS))  # the picker's latest value, or the kept one
    width = st.session_state[state.TRAJ_WINDOW_WIDTH] = st.session_state[state.TRAJ_WIDTH_PICK]
    if st.session_state.get(state.TRAJ_WINDOW_OF) != traj_id:  # another trajectory: from its first token
        st.session_state[state.TRAJ_WINDOW_OF] = traj_id
        st.session_state[state.TRAJ_WINDOW] = m.positions[0]
        st.session_state[state.TRAJ_FOCUS] = None
    start = _controls(m, width) if m.width > width else m.positions[0]
    focus = st.session_state.get(state.TRAJ_FOCUS)
    ui.figure(resources.token_heatmap(path, stamp, traj_id, metric, include_prompt, start, width, focus),
              "token-heatmap", f"heatmap-{traj_id}-{metric}-from-{start}",
              title=f"{traj_id}: {charts.SHORT_METRIC.get(metric, metric)} per checkpoint and token")


def _controls(m: explore.TokenMatrix, width: int) -> int:
    """Previous / slider / next, the two jumps and the width; returns the window's first position."""
    positions = m.positions
    last_start = positions[len(positions) - width]
    current = st.session_state.get(state.TRAJ_WINDOW, positions[0])
    st.session_state[state.TRAJ_WINDOW] = int(min(max(current, positions[0]), last_start))
    c = st.columns([1, 8, 1, 3, 3, 3], vertical_alignment="bottom")
    c[0].button("◀", key="traj_window_prev", help=f"the previous {width} tokens", on_click=_shift,
                args=(positions, width, -width))
    start = c[1].slider("First token shown", positions[0], int(last_start), key=state.TRAJ_WINDOW,
                        help="the window's first position; the strip above the heatmap is the whole CoT")
    c[2].button("▶", key="traj_window_next", help=f"the next {width} tokens", on_click=_shift,
                args=(positions, width, width))
    strongest = explore.strongest_position(m)
    c[3].button("Largest drift", key="traj_window_largest", on_click=_jump, args=(positions, width, strongest),
                disabled=strongest is None, help="the token whose value is largest in magnitude, any checkpoint")
    has_detrimental = (m.direction == "detrimental").any()
    c[4].button("Next detrimental ▼", key="traj_window_detrimental", on_click=_next_detrimental,
                args=(m, width), disabled=not has_detrimental, help="the next position marked ▼ after this one")
    c[5].select_slider("Tokens per window", WIDTHS, key=state.TRAJ_WIDTH_PICK)
    first = explore.window_column(positions, start, width)
    st.caption(f"Tokens {positions[first]} to {positions[min(first + width, len(positions)) - 1]} of "
               f"{positions[0]} to {positions[-1]}. The strip above is the whole CoT: per token, the value of "
               "largest magnitude under any checkpoint; the frame on it is this window.")
    return start


def _shift(positions: list[int], width: int, by: int) -> None:
    c = explore.window_column(positions, st.session_state[state.TRAJ_WINDOW], width)
    st.session_state[state.TRAJ_WINDOW] = int(positions[max(0, min(c + by, len(positions) - width))])


def _jump(positions: list[int], width: int, target: int | None) -> None:
    """Centre the window on ``target`` and outline it."""
    if target is not None:
        st.session_state[state.TRAJ_FOCUS] = target
        st.session_state[state.TRAJ_WINDOW] = explore.centred_start(positions, target, width)


def _next_detrimental(m: explore.TokenMatrix, width: int) -> None:
    """After the position last jumped to when it is in the window, else after the window's start."""
    start = st.session_state[state.TRAJ_WINDOW]
    c = explore.window_column(m.positions, start, width)
    shown = m.positions[c: c + width]
    focus = st.session_state.get(state.TRAJ_FOCUS)
    after = focus if focus is not None and shown[0] <= focus <= shown[-1] else shown[0] - 1
    _jump(m.positions, width, explore.next_detrimental(m, after))
