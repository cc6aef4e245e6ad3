"""Streamlit entry point: page config, the shared sidebar, and the routes. It only routes.

Run with ``workbench demo`` (or ``streamlit run workbench/app.py``).
"""

import streamlit as st

from workbench import auth, resources, routes, state, ui

st.set_page_config(page_title="CoT Drift Workbench", page_icon=":material/timeline:", layout="wide")
auth.gate()  # a server started with --host for other machines asks for its token before any page renders
state.init()

with st.sidebar:
    ui.world_picker()
    st.toggle("Presentation mode", key=state.PRESENTATION, help="Larger type, controls tucked away: for a projector.")
    st.segmented_control("Figure downloads", ["png", "svg"], key=state.FIG_FORMAT,
                         help="what the camera button on each chart saves; every chart also offers interactive HTML")
    st.caption(f"World: `{state.world_path().name}`  \nDevice: {resources.device_info().describe()}")

ui.style()  # images fit their columns; presentation mode's larger type

page = st.navigation(routes.navigation())
page.run()
