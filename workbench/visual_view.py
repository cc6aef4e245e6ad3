"""The Perturbation lab's Image section (vision-language worlds only): swap a study's image for other
studies' images, grey patches of it, and see the answer belief under every checkpoint (``core.perturb.visual``).

Every run is a background job (``core.jobs.registry.launch(ws, "visual", ...)``: ``python -m core.jobs.worker
visual``): progress, ETA and Cancel in the jobs
panel; its table lands under the workspace's ``perturbations/visual/<world>/`` and is listed below.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import streamlit as st

from core.errors import InputError
from core.io.images import ImageRef, load_image
from core.jobs import registry
from core.jobs import supervisor as jobs
from core.perturb import visual
from core.perturb.job import VisualOptions
from workbench import ui, visual_charts
from workbench.safe_text import inert

KIND = "visual"  # the job kind (core.jobs.registry)
EACH = "one of each other label"


def image_section(ws, world, base: visual.VisualConfig, record: dict, labels: list[str], n_records: int) -> None:
    """The Image section for ``record`` (the study the page picked, shown above it): swap its image, occlude
    patches of it, or swap every study's image, under ``base``'s series (the analysis's, CPO runs included)."""
    st.header("Image")
    st.caption("Keep the CoT, change the image: swap in another study's X-ray, or grey one patch at a time. A model "
               "that reads the image moves its answer belief; one that answers from the report alone does not.")
    folder = visual.results_dir(ws, world.name if world is not None else Path(base.data).parent.name)
    mine = world.root if world is not None else None  # the open world's jobs
    busy = any(j.state() == "running" for j in jobs.list_jobs(ws.job_dirs, KIND, mine))
    swap_tab, occlusion_tab, dataset_tab = st.tabs(["Image swap", "Region occlusion", "Over the dataset"])
    with swap_tab:
        _swap_form(ws, world, folder, base, record, labels, busy)
    with occlusion_tab:
        _occlusion_form(ws, world, folder, base, record, busy)
    with dataset_tab:
        _dataset_form(ws, world, folder, base, labels, n_records, busy)
    ui.jobs_panel(ws.job_dirs, KIND, lambda job, main, side: main.caption("Done: its result is listed below."),
                 world=mine)
    _results(folder, record["id"])


def _targets(key: str, labels: list[str]) -> list[str]:
    pick = st.selectbox("Swap in an image of", [EACH, *labels], key=key,
                        help="another study's image of this label (its own label: a control), or one study of "
                             "each other label")
    return [] if pick == EACH else [pick]


def _launch(ws, world, folder: Path, cfg: visual.VisualConfig, title: str, busy: bool, key: str) -> None:
    if st.button("Run", type="primary", key=key, disabled=busy, icon=":material/play_arrow:",
                 help="runs in the background; one visual job at a time" if busy else None):
        out = visual.result_path(folder, cfg)
        registry.launch(ws, KIND, cfg, VisualOptions(out=str(out), force=True), title=title, meta={"out": str(out)},
                        world=world.root if world is not None else None)
        st.rerun()


def _swap_form(ws, world, folder, base, record, labels, busy) -> None:
    c1, c2 = st.columns(2)
    with c1:
        swap_to = _targets("vis_swap_to", labels)
    decode = c2.toggle("Also re-decode greedily", key="vis_decode",
                       help="each checkpoint also writes its own CoT from the swapped image (slower)")
    along = c2.toggle("Belief along the CoT (at sentence ends)", key="vis_along",
                      help="probe at every sentence end too, not only at the end of the CoT")
    cfg = dataclasses.replace(base, kind="swap", traj_ids=[record["id"]], swap_to=swap_to, decode=decode,
                              positions="sentence" if along else "end")
    _launch(ws, world, folder, cfg, f"image swap · {record['id']}", busy, "vis_swap_run")


def _occlusion_form(ws, world, folder, base, record, busy) -> None:
    if len(visual.image_paths(record)) != 1:
        st.info(f"Occlusion takes a study with one image; {record['id']} has {len(visual.image_paths(record))}.")
        return
    c1, c2, c3, c4 = st.columns([2, 2, 2, 3])
    grid = c1.selectbox("Patches per side", [4, 8, 2, 16], key="vis_grid",
                        help="grid x grid variants, one patch greyed in each")
    mode = c2.radio("Cover", ["grid", "one rectangle"], key="vis_cover", horizontal=True)
    fill = c3.number_input("Grey level (-1: the image's mean)", -1, 255, -1, key="vis_fill")
    at = c4.radio("Read the belief", list(visual.OCCLUSION_AT), key="vis_occ_at", horizontal=True,
                  format_func=lambda a: visual.OCCLUSION_AT[a],
                  help="before the CoT: what the image (and the prompt) alone make the model believe. At the end "
                       "of a CoT that names its answer, covering a patch moves the belief by 1e-4 or less")
    region = None
    if mode == "one rectangle":
        cols = st.columns(4)
        region = [int(c.number_input(n, 0, 100_000, v, key=f"vis_region_{n}"))
                  for c, n, v in zip(cols, ("x0", "y0", "x1", "y1"), (0, 0, 32, 32), strict=True)]
    try:
        cfg = dataclasses.replace(base, kind="occlusion", traj_ids=[record["id"]], grid=int(grid), region=region,
                                  fill=None if fill < 0 else int(fill), occlusion_at=at)
    except ValueError as e:
        st.error(inert(str(e)))
        return
    _launch(ws, world, folder, cfg, f"occlusion · {record['id']}", busy, "vis_occlusion_run")


def _dataset_form(ws, world, folder, base, labels, n_records, busy) -> None:
    c1, c2 = st.columns(2)
    with c1:
        swap_to = _targets("vis_batch_swap_to", labels)
    limit = c2.number_input("Trajectories (0 = all)", 0, 100_000, 0, key="vis_batch_limit")
    st.caption(f"{min(n_records, int(limit) or n_records)} studies, each with its image swapped; the flip rate per "
               "true label and checkpoint step is drawn below when it is done.")
    cfg = dataclasses.replace(base, kind="swap", swap_to=swap_to, limit=int(limit) or None)
    with st.expander("Command line (the same job on another machine)"):
        options = VisualOptions(out=str(visual.result_path(folder, cfg)), force=True)
        st.code(registry.shell_command(*registry.command(KIND, cfg, options)), language="bash")
    _launch(ws, world, folder, cfg, f"image swaps over {Path(base.data).name}", busy, "vis_batch_run")


def _results(folder: Path, traj: str) -> None:
    found = visual.list_results(folder)
    if not found:
        st.caption("No image counterfactual has run on this world yet.")
        return
    st.subheader("Results")
    # keyed by the newest result: when a job finishes, its result is the one shown
    path = st.selectbox("Result", found, key=f"vis_result-{found[0].stem}", format_func=lambda p: f"{p.stem} · "
                        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(p.stat().st_mtime))}")
    try:
        df, meta = visual.read_result(path)
    except InputError as e:
        st.error(inert(str(e)))
        return
    if meta:
        st.caption(f"Cost: {visual.cost_text(meta, visual.result_kind(path))}")
    if visual.result_kind(path) == "occlusion":
        _occlusion_result(df, traj, path.stem)
    else:
        _swap_result(df, path.stem, traj)


def _swap_gallery(df, traj: str) -> None:
    """One study's own image and each image swapped in, side by side, each with its answer and beliefs under
    every checkpoint (end of the CoT): what the tables of file paths said, drawn."""
    end = df[df["is_end"]]
    ids = list(dict.fromkeys(end["traj_id"]))
    shown = st.selectbox("Study", ids, index=ids.index(traj) if traj in ids else 0, key="vis_swap_study") \
        if len(ids) > 1 else ids[0]
    rows = end[end["traj_id"] == shown]
    gold = rows["gold"].iloc[0]
    own = rows.drop_duplicates("checkpoint")[["checkpoint", "answer_before", "belief_before"]].rename(
        columns={"answer_before": "answer", "belief_before": f"P({gold})"})
    panels = [(rows["image"].iloc[0].split("; "), f"own image · {gold}", own)]
    for (image, donor, label), part in rows.groupby(["swapped_image", "swapped_id", "swapped_label"], sort=False):
        table = part[["checkpoint", "answer_after", "belief_original", "belief_swapped", "flipped"]].rename(
            columns={"answer_after": "answer", "belief_original": f"P({gold})", "belief_swapped": f"P({label})",
                     "flipped": "flip"})
        panels.append((image.split("; "), f"image of {donor} · {label}", table))
    for row in range(0, len(panels), 3):  # three a row: each image with its table under it
        for col, (images, caption, table) in zip(st.columns(3), panels[row: row + 3], strict=False):
            with col:
                ui.images(images, caption, width="stretch")
                st.dataframe(table, hide_index=True, column_config=ui.column_labels(table.columns),
                             key=f"vis-gallery-{shown}-{caption}")


def _swap_result(df, name: str, traj: str) -> None:
    if (~df["is_end"]).any():  # probed along the CoT: one study's belief paths, own vs swapped image
        pairs = df.drop_duplicates(["traj_id", "swapped_id"])
        pick = st.selectbox("Swap", range(len(pairs)), key="vis_swap_pair", format_func=lambda i: (
            f"{pairs.iloc[i]['traj_id']} with the image of {pairs.iloc[i]['swapped_id']} "
            f"({pairs.iloc[i]['swapped_label']})"))
        chosen = pairs.iloc[pick]
        rows = df[(df["traj_id"] == chosen["traj_id"]) & (df["swapped_id"] == chosen["swapped_id"])]
        ui.figure(visual_charts.swap_belief_paths(rows), "vis-swap-paths", f"image-swap-belief-{chosen['traj_id']}",
                  title=f"{chosen['traj_id']}: belief along the CoT, own vs swapped image")
    end = df[df["is_end"]]
    st.markdown(f"The answer flips in **{int(end['flipped'].sum())}** of {len(end)} swaps x checkpoints.")
    _swap_gallery(df, traj)
    rates = visual.swap_flip_rates(df)
    st.caption("Flip rate: the share of swaps whose answer changed. Answer = swapped image's label: the share "
               "whose answer *became* that label (a part of the flips; a study already answered with that "
               "label under its own image did not follow the image). Belief change: P(true label) with the "
               "swapped image minus with its own.")
    ui.figure(visual_charts.swap_flip_chart(rates), "vis-flip-chart", f"image-swap-flips-{name}",
              title="Flip rate under image swaps, per true label")
    ui.table(rates, "vis-flip-table", f"image-swap-flips-{name}")
    with st.expander("Every swap (a row per study, swapped image and checkpoint)"):
        ui.table(end, "vis-swap-table", f"image-swaps-{name}")


def _occlusion_result(df, traj: str, name: str) -> None:
    ids = list(dict.fromkeys(df["traj_id"]))
    shown = st.selectbox("Trajectory", ids, index=ids.index(traj) if traj in ids else 0, key="vis_occ_traj")
    rows = df[df["traj_id"] == shown]
    labels = list(dict.fromkeys(rows["label"]))
    first = rows.iloc[0]
    default = visual.strongest_label(rows)  # the label whose belief the patches move most: the effect shows
    label = st.selectbox("Belief in", labels, index=labels.index(default), key=f"vis_occ_label-{name}-{shown}",
                         help="red: greying the patch lowers this label's belief (the answer leans on it); first "
                              "shown: the label whose belief the patches move most")
    try:
        image = np.asarray(load_image(ImageRef(Path(first["image"]), f"occlusion result {name}")))
    except InputError as e:
        st.warning(inert(str(e)))
        return
    at = rows["probed_at"].iloc[0] if "probed_at" in rows else visual.OCCLUSION_AT["end"]  # older results: the end
    largest = rows[rows["label"] == label]["drop"].abs().max()
    st.caption(f"Belief read {at}. Red: covering the patch lowers P({inert(label)}); blue: raises it. The largest "
               f"change under any checkpoint is {100 * largest:.1f} percentage points (the colour scale's end).")
    ui.figure(visual_charts.occlusion_heatmap(image, rows, label), "vis-occlusion", f"occlusion-{shown}-{label}",
              title=f"{shown}: drop of P({label}) when a patch is greyed, read {at}")
    st.markdown(f"Per checkpoint, the patch whose greying lowers P({inert(label)}) most")
    ui.table(visual.top_patches(rows, label), "vis-occlusion-top", f"occlusion-top-{shown}")
