"""Counterfactuals: rewrite a trajectory's CoT to argue for other diseases (by the concept graph, or by a local
LLM expert), preview the change side by side, batch over a dataset, and list what is stored by consistency."""

import streamlit as st

from core.counterfactuals import batch as cf_job
from core.counterfactuals.expert import DEFAULT_TEMPLATE, Expert, ExpertConfig
from core.counterfactuals.rewrite import (
    TARGET_MODES,
    choose_targets,
    make_counterfactuals,
    swap_donors,
    true_disease,
    with_images,
)
from core.counterfactuals.store import (
    by_consistency,
    list_counterfactuals,
    store_counterfactuals,
)
from core.errors import InputError
from core.graph import concepts
from core.jobs import registry
from core.jobs import supervisor as jobs
from workbench import curation_view, graphview, resources, state, ui
from workbench.safe_text import inert

MODES = {"one": "one target", "all": "all other diseases", "confusable": "confusable diseases (shared findings)"}
METHODS = {"graph": "graph rules", "llm": "LLM expert (local model)",
           "image_swap": "image swap (same CoT, another study's image of the target)"}

def preview_name(item: tuple) -> str:
    score = "image swap" if item[2] is None else f"consistency {item[2]:.2f}"
    return f"{item[0]} · {score}"


st.title("Counterfactuals")
st.caption("Counterfactual chains of thought argue for a disease the study does not show: the rejected side of "
           "CPO's preference pairs. Each one is stored with its method, target, graph version and settings.")

ws, world = ui.page_context(world_required=True)
path, ws_path, store = str(state.world_path()), st.session_state[state.WORKSPACE_PATH], ws.store
try:
    fp = world.fingerprint()
    graph, version = resources.concept_graph(ws_path, str(world.graph_path))
except InputError as e:
    st.error(inert(f"Cannot open the world's concept graph: {e}"))
    st.stop()

left, right = st.columns(2)
names = list(world.manifest["datasets"])
ds = left.selectbox("Dataset", names, index=names.index(world.manifest.get("default_dataset", names[0])), key="cf_dataset")
try:
    records = with_images(resources.dataset(path, ds), world.dataset_path(ds))  # images: absolute paths
except InputError as e:
    st.error(inert(str(e)))
    st.stop()
source = cf_job.source_of(world.name, ds)
pick = right.selectbox("Trajectory", range(len(records)), key="cf_record",
                       format_func=lambda i: f"{records[i]['id']} · {records[i].get('label')}")
record = records[pick]
with_pictures = any(r["images"] for r in records)  # a vision-language dataset: show the study's image, offer swaps
if with_pictures:
    st.html(curation_view.IMAGE_CSS)  # an X-ray beside the text fits its column
text_col, image_col = st.columns([2, 1]) if record["images"] else (st.container(), None)
text_col.code(f"{record['prompt']}\n\n{record['completion']}", language=None, wrap_lines=True)
if image_col:
    with image_col:
        ui.images(record["images"], f"{record['id']} · {record.get('label')}")

methods = [m for m in METHODS if m != "image_swap" or with_pictures]
method = st.radio("Method", methods, format_func=METHODS.get, horizontal=True, key="cf_method")
expert = None
if method == "llm":
    with st.expander("Expert model, prompt and sampling", expanded=True):
        series = resources.model_series(path, fp)
        ckpt = st.selectbox("Checkpoint", series.names, key="cf_checkpoint")
        template = st.text_area("Prompt ({report}, {graph}, {disease} are filled in)", DEFAULT_TEMPLATE, key="cf_template")
        c = st.columns(5)
        settings = dict(temperature=c[0].number_input("Temperature", 0.05, 2.0, 0.7, 0.05, key="cf_temperature"),
                        top_p=c[1].number_input("Top-p", 0.05, 1.0, 0.95, 0.05, key="cf_top_p"),
                        max_new_tokens=c[2].number_input("Max new tokens", 8, 1024, 96, 8, key="cf_max_new"),
                        seed=c[3].number_input("Seed", 0, 2**31 - 1, 0, key="cf_seed"),
                        graph_scope=c[4].selectbox("Graph in prompt", ["focus", "all"], key="cf_scope"))
        try:
            expert = Expert(series, ckpt, ExpertConfig(template=template, **settings))
        except InputError as e:
            st.error(inert(str(e)))
            st.stop()

mode = st.radio("Targets", TARGET_MODES, format_func=MODES.get, horizontal=True, key="cf_mode")
true = true_disease(record)
others = [d for d in concepts.diseases(graph) if d != true]
target = st.selectbox("Target disease", others, key="cf_target") if mode == "one" else None
targets = choose_targets(graph, true, mode, target)
st.caption(inert(f"Concept graph version {version} · targets for {record['id']}: {', '.join(targets) or 'none'}"))
if method == "image_swap":  # a target needs a study of its label to take the image from
    have = {t: len(swap_donors(records, t, record)) for t in targets}
    st.caption(inert("Studies to take an image from: " + (", ".join(f"{t} {n}" for t, n in have.items() if n) or "none")
                     + (f" · none for {', '.join(t for t, n in have.items() if not n)}" if not all(have.values()) else "")))

if st.button("Generate for this trajectory", key="cf_generate", type="primary", disabled=not targets):
    try:
        skipped: list[str] = []
        cfs = make_counterfactuals(graph, record, targets, method, version, expert, donors=records, skipped=skipped)
        for line in skipped:  # a rewrite of the answer alone is not a counterfactual: said, not stored
            st.warning(inert(line))
        if not cfs:
            raise InputError(f"no study of {', '.join(targets)} with an image to swap in" if method == "image_swap"
                             else "no counterfactual: no rewrite changed a finding (nothing was stored)")
        store_counterfactuals(store, record, source, cfs, world.key)
        st.session_state[state.CF_LAST] = {
            "original": record["completion"], "id": record["id"], "images": record["images"],
            "label": record.get("label"),
            "items": [(cf.target, cf.completion, cf.consistency and cf.consistency.score, list(cf.images), cf.method)
                      for cf in cfs]}
    except InputError as e:
        st.error(inert(str(e)))

last = st.session_state[state.CF_LAST]
if last:
    st.subheader(inert(f"Preview · {last['id']}"))  # a trajectory id: the file's text
    items = last["items"]
    k = st.selectbox("Counterfactual", range(len(items)), key="cf_preview", format_func=lambda i: preview_name(items[i]))
    target, text, _, images, kind = (*items[min(k, len(items) - 1)], [], "")[:5]
    diff = graphview.side_by_side_html(last["original"], text)
    if images and images != last.get("images"):  # an image swap: the two images side by side, above the same text
        left, right = st.columns(2)
        with left:
            ui.images(last["images"], f"original · {last.get('label')}")
        with right:
            ui.images(images, f"counterfactual image · {target}")
        st.html(diff)  # escaped HTML as HTML: in markdown, a blank line in a CoT ended the HTML block
    elif last.get("images"):
        text_col, image_col = st.columns([2, 1])
        text_col.html(diff)
        with image_col:
            ui.images(last["images"], f"{last['id']} (both sides)")
    else:
        st.html(diff)

st.subheader("Batch over the dataset")
st.caption("Runs in the background (close the tab, it keeps going); Cancel stops it after the current "
           "trajectory, and what finished stays stored.")
n = st.number_input("Trajectories (from the first)", 1, len(records), min(50, len(records)), key="cf_batch_n")
running = [j for j in jobs.list_jobs(ws.job_dirs, cf_job.KIND, world.root) if j.state() == "running"]
if st.button("Run batch", key="cf_batch_run", disabled=not (mode != "one" or target) or bool(running),
             icon=":material/play_arrow:"):
    try:
        llm = {"expert_checkpoint": ckpt, "expert": {"template": template, **settings}} if expert else {}
        batch = cf_job.BatchConfig(workspace=str(ws.root), world=str(world.root), dataset=ds, n=int(n), mode=mode,
                                   target=target, method=method, **llm)
        registry.launch(ws, cf_job.KIND, batch, title=f"counterfactuals · {ds} · {int(n)} trajectories · {mode}")
        st.rerun()
    except (InputError, ValueError) as e:
        st.error(inert(str(e)))
if running:
    st.caption("One batch at a time: wait for it or cancel it below.")
ui.jobs_panel(ws.job_dirs, cf_job.KIND, lambda job, main, side: main.caption(job.progress().get("message", "")),
              world=world.root)

st.subheader("Stored counterfactuals")
table = list_counterfactuals(store, source, world.key)
order = st.radio("Consistency", ["lowest first", "highest first"], horizontal=True, key="cf_sort")
table = by_consistency(table, order == "lowest first")
st.dataframe(curation_view.counterfactual_rows(table), hide_index=True, key="cf_table",
             column_config={"created_at": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm:ss"),
                            "consistency": st.column_config.ProgressColumn("consistency", min_value=0, max_value=1,
                                                                           format="%.2f")})
