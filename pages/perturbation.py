"""Perturbation lab: swap a span for a near-synonym and see whether the answer flips, checkpoint by checkpoint.

One trajectory runs in the page (a probe per checkpoint: fractions of a second on the sample world); a whole
dataset runs as a background job (``workbench perturb``) with progress and Cancel. A vision-language world
also gets an Image section (``workbench.visual_view``): image swaps and region occlusion, as background jobs.
"""

import dataclasses
from pathlib import Path

import pandas as pd
import streamlit as st

from core.drift.analysis import list_analyses, resolve_labels
from core.drift.config import AnalysisConfig
from core.errors import InputError
from core.jobs import registry
from core.jobs import supervisor as jobs
from core.models.branches import run_branches
from core.models.families import family_for
from core.perturb import text as perturb
from core.perturb import visual
from core.perturb.job import PerturbOptions
from workbench import charts, resources, state, ui, visual_view
from workbench.safe_text import inert

st.title("Perturbation lab")
st.caption("Replace a finding by a near-synonym from the concept graph (or any span) and compare the answer "
           "before and after under every checkpoint. A model that reasons from the findings should not care; "
           "one that drifted to a surface shortcut flips.")

ws, world = ui.page_context()
if world is not None and not list_analyses(ws.analyses_dir, world.analysis_dir):  # nothing scored yet: the world's
    cfg = AnalysisConfig.from_world(world.root)  # own series and default dataset
    stamp = resources.file_stamp(cfg.data)
    st.caption(f"No analysis of this world yet: its checkpoints and its `{Path(cfg.data).name}`.")
else:
    info = ui.pick_analysis(ws, world, state.LAB_ANALYSIS, "Series and trajectories (of an analysis)",
                            "The lab uses the checkpoint series and trajectories of an analysis; score one on the "
                            "Checkpoints page.")
    cfg, stamp = resources.load_analysis(str(info.path), info.stamp).config, info.stamp
try:
    records = resources.records(cfg.data, cfg.limit, stamp)
    # the graph as edited on the Concept graph page (its file is version 1): swaps follow the researchers' edits
    graph = resources.concept_graph(st.session_state[state.WORKSPACE_PATH], cfg.graph)[0] if cfg.graph else None
    labels, _ = resolve_labels(cfg, records)
    reads_images = family_for(cfg.base).reads_images  # an unsupported model: refused by name here
except InputError as e:
    st.error(inert(f"Cannot read this analysis's inputs: {e}"))
    st.stop()


def get_series():
    return resources.series(cfg.base, tuple(cfg.checkpoints) if isinstance(cfg.checkpoints, list) else cfg.checkpoints,
                            cfg.device, cfg.dtype, tuple(cfg.base_names), cfg.vision)


branches = run_branches(cfg.checkpoints)  # CPO runs: drawn beside their start, not on the RFT step axis
# one study for both sections: the image is swapped or occluded, and the text perturbed, in the same study
by_id = {r["id"]: r for r in records}
ids = list(by_id)
state.persist(state.LAB_TRAJECTORY, state.TRAJECTORY, ids)
traj_id = st.selectbox("Trajectory", ids, key=state.LAB_TRAJECTORY, format_func=lambda t: f"{t} · {by_id[t].get('label', '?')}")
st.session_state[state.TRAJECTORY] = traj_id
record = by_id[traj_id]
if record.get("images"):  # a VL study: every test below reads it with this X-ray
    picture, text = st.columns([1, 2])
    with picture:
        ui.images(record["images"], traj_id)
    text.text(f"{record['prompt']}\n{record['completion']}")
else:
    st.text(f"{record['prompt']}\n{record['completion']}")
if reads_images and record.get("images"):  # the series' family reads this X-ray
    visual_view.image_section(ws, world, visual.VisualConfig.from_analysis(cfg), record, labels, len(records))
    st.header("Text")
single, batch = st.tabs(["One trajectory", "Over the dataset"])

with single:
    options = perturb.swaps_in(record, graph) if graph is not None else []
    c1, c2, c3 = st.columns([3, 3, 2])
    if options:
        pick = c1.selectbox("Finding in this trajectory", range(len(options)), key="lab_pick",
                            format_func=lambda i: f"{options[i][1]}  ({options[i][0]})")
        concept, surface, alternatives = options[pick]
        alt = c2.selectbox("Replace with (graph synonyms)", [*alternatives, "other…"], key=f"lab_alt_{pick}")
        find = surface
        replace = c2.text_input("Replacement", key="lab_replace_free") if alt == "other…" else alt
    else:
        st.caption("No finding of the concept graph occurs here; type the span to replace.")
        find = c1.text_input("Span to replace", key="lab_find")
        replace = c2.text_input("Replacement", key="lab_replace")
    mode = c3.radio("Answer by", ["probe", "generate"], key="lab_mode", horizontal=True,
                    help="probe: keep this CoT (with the span swapped) and read the answer at its end; "
                         "generate: let each checkpoint write its own CoT from the swapped report")
    if st.button("Swap and compare", type="primary", key="lab_run", disabled=not (find and replace),
                 icon=":material/swap_horiz:"):
        with st.spinner("Answering under every checkpoint…"):
            try:
                series = get_series()
                result = perturb.perturbation_test(series, [record], find, replace, labels, mode=mode,
                                                   chat_template=cfg.chat_template, template=cfg.template)
            except InputError as e:
                st.error(inert(str(e)))
                result = None
        st.session_state[state.LAB_RESULT] = (traj_id, find, replace, mode, result)
    saved = st.session_state.get(state.LAB_RESULT)
    if saved and saved[0] == traj_id and saved[4] is not None:
        _, f, r, m, result = saved
        if result.empty:
            st.warning(inert(f"{f!r} does not occur in this trajectory."))
        else:
            flips, bad = int(result["flip"].sum()), int(result["malformed"].sum())
            st.markdown(f"**{f} → {r}** ({m}): the answer flips under **{flips}** of {len(result) - bad} checkpoints"
                        + (f"; under {bad} no answer could be read before or after the swap (malformed, not a flip)."
                           if bad else "."))
            if m == "probe":
                ui.figure(charts.perturbation_beliefs(result, branches), "lab-single-chart", f"swap-{traj_id}",
                          title=f"{traj_id}: gold belief before and after {f} → {r}")
            ui.table(result, "lab-single-table", f"swap-{traj_id}")

with batch:
    c1, c2, c3 = st.columns([3, 3, 2])
    pairs = perturb.swap_pairs(graph) if graph is not None else []
    if pairs:
        choice = c1.selectbox("Synonym swap from the concept graph", [*range(len(pairs)), -1],
                              key="lab_pair", format_func=lambda i: "type my own…" if i < 0 else
                              f"{pairs[i][1]} → {pairs[i][2]}")
    else:
        choice = -1
    if choice < 0:
        bfind = c1.text_input("Span to replace", key="lab_bfind")
        breplace = c1.text_input("Replacement", key="lab_breplace")
    else:
        _, bfind, breplace = pairs[choice]
    bmode = c2.radio("Answer by", ["generate", "probe"], key="lab_bmode", horizontal=True,
                     help="generate (the paper's flip rate): each checkpoint writes its own CoT; probe: faster, "
                          "the dataset's CoT is kept")
    blimit = c3.number_input("Trajectories (0 = all)", 0, 100_000, 0, key="lab_blimit")
    n_hit = sum(perturb.replace_span(r, bfind, breplace) is not None for r in records) if bfind else 0
    st.caption(f"{n_hit} of the {len(records)} trajectories contain {bfind!r}." if bfind else "")
    out = perturb.batch_output(ws.perturbations_dir, cfg.data, bfind, breplace, bmode, blimit)
    limit = int(blimit) or cfg.limit
    # --force: the same batch run again replaces its own earlier result (never a file the workbench did not write)
    job_cfg = dataclasses.replace(cfg, limit=limit)
    job_options = PerturbOptions(out=str(out), find=bfind or "", replace=breplace or "", mode=bmode, force=True)
    st.code(registry.shell_command(*registry.command("perturb", job_cfg, job_options)), language="bash")
    running = [j for j in jobs.list_jobs(ws.job_dirs, "perturb", world and world.root) if j.state() == "running"]
    if st.button("Run over the dataset", type="primary", key="lab_brun", disabled=not (bfind and breplace and n_hit)
                 or bool(running), icon=":material/play_arrow:"):
        registry.launch(ws, "perturb", job_cfg, job_options, title=f"{bfind} → {breplace} ({bmode}, {Path(cfg.data).name})",
                        meta={"out": str(out)}, world=world and world.root)
        st.rerun()

    def show_result(job, main, side) -> None:
        if not Path(job.meta.get("out", "")).is_file():
            main.warning(f"{job.meta.get('out')}: result file missing")
            return
        if side.toggle("Show", key=f"show-{job.id}", value=job.id == newest):
            df = pd.read_parquet(job.meta["out"])
            summary = perturb.perturbation_summary(df)
            with main:
                st.markdown("Per checkpoint: accuracy before and after the swap, and the flip rate")
                ui.figure(charts.perturbation_over_steps(summary, branches), f"lab-sum-{job.id}", f"flips-{job.id}",
                          title=f"{job.title}: accuracy and flip rate per checkpoint")
                ui.table(summary, f"lab-sumt-{job.id}", f"flips-{job.id}")
                cats = perturb.category_flips(df)
                if not cats.empty:
                    st.markdown("Flip rate per gold category and checkpoint")
                    ui.figure(charts.category_flip_heatmap(cats, branches=branches), f"lab-cat-{job.id}",
                              f"category-flips-{job.id}", title=f"{job.title}: flip rate per category")

    previous = jobs.list_jobs(ws.job_dirs, "perturb", world and world.root)
    newest = previous[0].id if previous else None
    ui.jobs_panel(ws.job_dirs, "perturb", show_result, world=world and world.root)
