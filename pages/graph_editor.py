"""Concept graph editor: see the graph, search a node, edit nodes, edges and synonyms, undo / redo, history.

Every edit is a new version in the workspace database, based on the version this tab shows: if another tab
saved in between, the edit is refused with a clear message instead of overwriting.
"""

import pandas as pd
import streamlit as st

from core.errors import InputError
from core.graph import concepts
from core.graph import formats as graph_io
from workbench import graphview, resources, state, ui

st.title("Concept graph")
st.caption("Diseases, the findings that support them and the ones that exclude them: the expert knowledge "
           "behind the counterfactuals. Edits are versioned in the workspace; the world's file is never written.")

_, world = ui.page_context(world_required=True)
try:
    gs = resources.graph_store(st.session_state[state.WORKSPACE_PATH], str(world.graph_path))
except InputError as e:
    st.error(f"Cannot open the concept graph: {e}")
    st.stop()

head = gs.head()
if not st.session_state[state.GRAPH_SEEN] or st.session_state[state.GRAPH_SEEN][0] != gs.key:
    st.session_state[state.GRAPH_SEEN] = (gs.key, head)
seen = st.session_state[state.GRAPH_SEEN][1]


def show(version: int, message: str | None = None) -> None:
    st.session_state[state.GRAPH_SEEN] = (gs.key, version)
    st.session_state[state.GRAPH_FLASH] = message


def run(action, message: str) -> None:
    """Apply one change based on the version shown; refusals (conflict, invalid edit) are shown, not raised."""
    try:
        show(action(), message)
    except InputError as e:
        st.error(str(e))
        return
    st.rerun()


if st.session_state[state.GRAPH_FLASH]:
    st.success(st.session_state[state.GRAPH_FLASH])
    st.session_state[state.GRAPH_FLASH] = None
if seen != head:
    st.warning(f"This tab shows version {seen}, but version {head} is current (saved in another tab). "
               "Edits from here would be refused until you load it.")
    st.button(f"Load version {head}", key="graph_load_head", on_click=show, args=(head,))

graph = gs.graph(seen)
bar = st.columns([1, 1, 6])
if bar[0].button("Undo", key="graph_undo", icon=":material/undo:", disabled=seen != head or not gs.can_undo()):
    run(lambda: gs.undo(base=seen), "Undone.")
if bar[1].button("Redo", key="graph_redo", icon=":material/redo:", disabled=seen != head or not gs.can_redo()):
    run(lambda: gs.redo(base=seen), "Redone.")

query = st.text_input("Search a node (label or synonym)", key=state.GRAPH_SEARCH)
matches = concepts.search(graph, query)
if query and not matches:
    st.info(f"No node matches {query!r}.")
focus = st.selectbox("Highlight", matches, key="graph_focus") if matches else None
st.markdown(graphview.legend_html(graph, seen, focus), unsafe_allow_html=True)
st.iframe(resources.graph_html(gs, str(gs.store.path), gs.key, seen, focus), height=graphview.HEIGHT + 20)

nodes, ids = sorted(graph.nodes, key=str), lambda kind: sorted((concepts.diseases if kind == "disease" else
                                                                 concepts.findings)(graph), key=str)
# keyed and tracked: the open tab survives the rerun after an edit, Undo or Redo
t_node, t_edge, t_syn, t_hist, t_io = st.tabs(["Nodes", "Edges", "Synonyms", "History", "Import / export"],
                                              key="graph_tab", on_change="rerun")
with t_node:
    with st.form("add_node", clear_on_submit=True):
        st.markdown("**Add a node**")
        name = st.text_input("Name", key="node_name")
        kind = st.radio("Kind", concepts.KINDS, horizontal=True, key="node_kind")
        syn = st.text_input("Synonyms (comma-separated)", key="node_synonyms")
        desc = st.text_input("Description", key="node_description")
        if st.form_submit_button("Add node"):
            run(lambda: gs.edit({"op": "add_node", "id": name, "kind": kind, "synonyms": syn, "description": desc},
                                base=seen), f"Added {kind} {name!r}.")
    with st.form("rename_node"):
        st.markdown("**Rename or delete a node**")
        node = st.selectbox("Node", nodes, key="rename_which")
        new = st.text_input("New name", key="rename_to")
        a, b = st.columns(2)
        if a.form_submit_button("Rename"):
            run(lambda: gs.edit({"op": "rename_node", "id": node, "new_id": new}, base=seen), f"Renamed to {new!r}.")
        if b.form_submit_button("Delete node"):
            run(lambda: gs.edit({"op": "delete_node", "id": node}, base=seen), f"Deleted {node!r} and its edges.")
with t_edge:
    with st.form("set_edge"):
        st.markdown("**Add or change an edge** (finding → disease)")
        a, b = st.columns(2)
        src = a.selectbox("Finding", ids("finding"), key="edge_source")
        dst = b.selectbox("Disease", ids("disease"), key="edge_target")
        rel = st.radio("Relation", concepts.RELATIONS, horizontal=True, key="edge_relation")
        weight = st.slider("Weight", 0.0, 1.0, 0.5, 0.05, key="edge_weight")
        a, b = st.columns(2)
        if a.form_submit_button("Save edge"):
            run(lambda: gs.edit({"op": "set_edge", "source": src, "target": dst, "relation": rel, "weight": weight},
                                base=seen), f"Saved {src} {rel} {dst}.")
        if b.form_submit_button("Delete edge"):
            run(lambda: gs.edit({"op": "delete_edge", "source": src, "target": dst}, base=seen), "Edge deleted.")
with t_syn:
    node = st.selectbox("Node", nodes, key="syn_node")
    with st.form("synonyms"):
        syn = st.text_area("Synonyms, one per line", "\n".join(graph.nodes[node].get("synonyms", [])),
                           key=f"syn_text_{seen}_{node}")
        desc = st.text_input("Description", graph.nodes[node].get("description", ""), key=f"syn_desc_{seen}_{node}")
        if st.form_submit_button("Save synonyms"):
            run(lambda: gs.edit({"op": "update_node", "id": node, "synonyms": syn.splitlines(), "description": desc},
                                base=seen), f"Saved the synonyms of {node!r}.")
with t_hist:
    history = pd.DataFrame([{"version": v.version, "current": "●" if v.is_head else "", "change": v.summary,
                             "from": v.parent, "saved": pd.Timestamp(v.created_at, unit="s").strftime("%Y-%m-%d %H:%M:%S")}
                            for v in gs.history()])
    st.dataframe(history, hide_index=True, key="graph_history")
    versions = history["version"].tolist()
    a, b = st.columns(2)
    at = versions.index(seen)  # by default the shown version against the one before it (never with itself)
    older = at + 1 if at + 1 < len(versions) else max(0, at - 1)
    old = a.selectbox("Compare version", versions, index=older, key=f"diff_a_{versions[0]}_{seen}")
    new = b.selectbox("with version", versions, index=versions.index(seen), key=f"diff_b_{versions[0]}_{seen}")
    rows = gs.diff(old, new).rows()
    st.dataframe(pd.DataFrame(rows, columns=["change", "item", "detail"]), hide_index=True, key="graph_diff")
    if st.button(f"Restore version {old} as a new version", key="graph_restore", disabled=seen != head):
        run(lambda: gs.restore(old, base=seen), f"Restored version {old}.")
with t_io:
    fmt = st.radio("Format", list(graph_io.FORMATS), format_func=graph_io.FORMATS.get, horizontal=True, key="io_fmt")
    st.download_button(f"Export version {seen}", graph_io.export_graph(graph, fmt), f"concept_graph_v{seen}.{fmt}",
                       key="graph_export")
    upload = st.file_uploader("Import a graph (.json, .graphml, .csv) as a new version", key="graph_import")
    if upload is not None and st.button("Import", key="graph_import_go"):
        run(lambda: gs.replace(graph_io.import_graph(upload.getvalue(), upload.name, base=graph), seen,
                               f"import {upload.name}"), f"Imported {upload.name}.")
