"""Streamlit entry point: page config, the shared sidebar, and the routes. It only routes.

Run with ``workbench demo`` (or ``streamlit run workbench/app.py``).
"""

from pathlib import Path

import streamlit as st

from workbench import resources, state

PAGES = Path(__file__).resolve().parent.parent / "pages"

st.set_page_config(page_title="CoT Drift Workbench", page_icon=":material/timeline:", layout="wide")
state.init()

with st.sidebar:
    st.toggle("Presentation mode", key=state.PRESENTATION, help="Larger type, controls tucked away: for a projector.")
    st.caption(f"World: `{state.world_path().name}`  \nDevice: {resources.device_info().describe()}")

if st.session_state[state.PRESENTATION]:
    st.html("<style>html, .stMarkdown p, .stDataFrame {font-size: 1.25rem;} "
            "[data-testid='stSidebarCollapsedControl'] {display: none;}</style>")

page = st.navigation({
    "Workbench": [st.Page(PAGES / "home.py", title="Home", icon=":material/home:", default=True),
                  st.Page(PAGES / "curation.py", title="Curation", icon=":material/rule:")],
})
page.run()
