"""Home: the loaded world at a glance, the drift it holds, and the loop the workbench supports."""

import pandas as pd
import streamlit as st

from core.errors import InputError
from core.io.trajectories import read_trajectories
from core.workspace.world import known_worlds
from workbench import charts, resources, routes, ui
from workbench.safe_text import inert

st.title("CoT Drift Workbench")
st.caption("See where the chain of thought of RFT checkpoints drifts, tell beneficial from detrimental drift, "
           "and repair the detrimental kind with Counterfactual Preference Optimization.")

ws, world = ui.page_context(world_required=True)
path = world.root
try:
    fingerprint = world.fingerprint()
    summary = resources.world_summary(str(path), fingerprint)
    metrics = resources.world_metrics(str(path), fingerprint)
except InputError as e:
    st.error(inert(f"Cannot open the world: {e}"))
    st.stop()

st.subheader(inert(summary["name"]))  # world.json's text: shown as typed, fetching nothing
st.caption(f"{inert(summary['description'])}  \n`{summary['root']}`")
others = [p for p in known_worlds(ws.root, ws.store) if p != path.resolve()]
if others:  # e.g. the demo's two sample worlds, or a researcher's runs
    names = ", ".join(f"`{p.name.replace('`', '')}`" for p in others[:5]) + (  # code spans: no markup
        f" and {len(others) - 5} more" if len(others) > 5 else "")
    st.info(f"Other worlds in this workspace: {names}. Switch in the sidebar's **World** picker.")
model, steps = summary["model"], [c["step"] for c in summary["checkpoints"]]
dev = resources.device_info()
params = model["parameters"]
facts = [  # short values: a metric's value is cut, not wrapped, in a narrow column
    ("Base model", f"{params / 1e9:.1f} B" if params >= 1e9 else f"{params / 1e6:.2f} M",
     model["architecture"].removesuffix("ForCausalLM").removesuffix("ForConditionalGeneration")),
    ("Vocabulary", summary["tokenizer"]["vocab_size"] or "—", "tokens"),
    ("Checkpoints", len(steps), f"steps {steps[0]}–{steps[-1]}" if steps else "none"),
    ("Concept graph", summary["graph"]["nodes"], f"{summary['graph']['diseases']} diseases"),
    ("Device", dev.device.upper(), dev.dtype),
]
for col, (label, value, note) in zip(st.columns(len(facts)), facts, strict=True):
    col.metric(label, value, note, delta_color="off", delta_arrow="off", border=True)

left, right = st.columns([3, 2])
with left:
    st.caption("Measured when the world was built: greedy decoding of the whole CoT on the held-out studies, not "
               "the explorer's teacher-forced probe.")
    extra = world.chart_metrics()  # the world's own figures (its plug-in)
    table = charts.drift_table(metrics, extra)
    if table.empty:
        st.info("This world records no drift table yet: it comes from greedy decoding of the held-out studies under "
                f"each checkpoint, `workbench evaluate --world {world.root} --record` (the drift explorer shows "
                "scored analyses, it does not fill this table).")
    else:
        ui.figure(charts.drift_over_steps(table, extra), "drift_over_steps", "drift-over-steps",
                  title="Drift across the RFT checkpoints (held-out, greedy decoding)")
        st.dataframe(table, hide_index=True, key="drift_table",
                     column_config={c: st.column_config.NumberColumn(label, format="%.3f")
                                    for c, (label, *_) in charts.series_of(extra).items()})
with right:
    if world.is_vl:  # its family reads images
        st.markdown("**Example studies** (the films the model reads)")
        data_file = world.dataset_path(world.manifest.get("default_dataset") or next(iter(world.manifest["datasets"])))
        try:  # the one trajectory reader: JSONL, a JSON list (ms-swift's), parquet, a datasets folder
            examples = read_trajectories(data_file, limit=4, check_images=False)  # ui.images names a bad file
        except InputError as e:
            st.warning(inert(f"Cannot show example studies: {e}"))
            examples = []
        for row in range(0, len(examples), 2):  # two films a row: each fits its column, its caption under it
            for col, rec in zip(st.columns(2), examples[row: row + 2], strict=False):
                with col:
                    ui.images(rec.get("images") or [], caption=str(rec.get("label") or ""), width="stretch")
    st.markdown("**Checkpoint series**")
    st.dataframe(pd.DataFrame(summary["checkpoints"]), hide_index=True, key="checkpoints")
    st.markdown("**Datasets**")
    st.dataframe(pd.DataFrame(summary["datasets"].items(), columns=["dataset", "records"]), hide_index=True)

st.markdown("**The loop.** Load checkpoints → see drift → edit the concept graph → generate counterfactuals → "
            "curate → run CPO → compare drift before and after.")
LOOP = [(routes.checkpoints, "score a series"), (routes.explorer, "where it drifts"),
        (routes.perturbation, "swap a finding"), (routes.graph_editor, "the expert knowledge"),
        (routes.counterfactuals, "rewrite the CoT"), (routes.curation, "build the dataset"),
        (routes.runs, "repair and compare")]
for row in range(0, len(LOOP), 4):  # four a row: seven side by side cut their names ("Perturbation l")
    for col, (route, note) in zip(st.columns(4), LOOP[row: row + 4], strict=False):
        with col:
            st.page_link(route(), width="stretch")
            st.caption(note)
