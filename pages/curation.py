"""Curation: annotators review counterfactual pairs side by side, decide with the keyboard (A accept,
X reject, E save edit, S skip), settle conflicts, and export the result as a dataset snapshot for CPO."""

import streamlit as st

from core.curation import queue as curation
from workbench import curation_view as view
from workbench import state, ui
from workbench.safe_text import inert

st.title("Curation")
st.caption("Review counterfactual pairs, decide (several annotators per item if you like), settle conflicts, "
           "and export the accepted pairs as the preference dataset a CPO run trains on.")

ws, world = ui.page_context()
store = ws.store

annotator = st.session_state[state.ANNOTATOR]
scope = view.world_scope(store, world)  # the open world's items, or every world's when the user says so
flt = view.filters(store, scope)
counts = curation.progress(store, flt)  # (settled, total), shared by the focus view and the queue
annotate, queue, conflicts, agreement, imports, exports = st.tabs(
    ["Annotate", "Queue", "Conflicts", "Agreement", "Import", "Export"])
with annotate:
    main, side = st.columns([3, 1])
    with main:
        if not annotator:
            with st.form("cur_annotator_form"):
                name = st.text_input("Your name, recorded with every decision (asked once per session)",
                                     key="cur_name")
                if st.form_submit_button("Start annotating") and name.strip():
                    st.session_state[state.ANNOTATOR] = name.strip()
                    st.rerun()
            st.info("Enter your name to start annotating.")
        else:
            st.caption(f"Annotating as **{inert(annotator)}**")
            view.focus(store, annotator, flt, counts)
    with side:
        view.guidelines_panel(store, annotator or "anonymous")
with queue:
    view.queue_panel(store, flt, counts)
with conflicts:
    if annotator:
        view.conflicts_panel(store, annotator, scope)
    else:
        st.info("Enter your name above to settle conflicts.")
with agreement:
    view.agreement_panel(store, scope)
with imports:
    view.import_panel(store, world.root / "examples" if world else None, world)
with exports:
    view.export_panel(store, ws.datasets_dir, scope)
