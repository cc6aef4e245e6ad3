"""Drift explorer: the dataset overview (where along the steps, which tokens and concepts), then one
trajectory token by token. Everything shown comes from an analysis folder (``core.drift.analysis``)."""

import pandas as pd
import streamlit as st

from core.drift import explore
from core.errors import InputError
from core.models.branches import run_branches
from workbench import charts, heatmap_window, resources, state, ui
from workbench.safe_text import inert

st.title("Drift explorer")

ws, world = ui.page_context()
info = ui.pick_analysis(ws, world, state.EXPLORER_ANALYSIS, "Analysis",
                        "No drift analysis yet. Score a checkpoint series on the **Checkpoints** page first.")
chosen = str(info.path)
try:
    a = resources.analysis_view(chosen, info.stamp)  # config and summary tables; trajectories on demand
    trajs = resources.trajectory_table(chosen, info.stamp)
except (InputError, OSError) as e:
    st.error(inert(f"Cannot read this analysis: {e}"))
    st.stop()

probed = a.probed
if not probed:  # nothing named an answer: token drift only (core.drift.probe.NO_LABELS)
    st.info("Scored without the answer probe: no labels were given, found in a concept graph, or read from the "
            "trajectories' answers. Token drift (KL, probability, entropy) is shown; beliefs and effects are not.")
VIEWS = ["Overview", "Trajectory"]
st.session_state.setdefault(state.EXPLORER_VIEW, VIEWS[0])
view = st.segmented_control("View", VIEWS, key=state.EXPLORER_VIEW, label_visibility="collapsed") or VIEWS[0]


def open_driver(kind: str, table: pd.DataFrame, widget_key: str) -> None:
    """A driver row was picked: filter the trajectory view to where it happens and switch to it."""
    rows = st.session_state[widget_key]["selection"]["rows"]
    if not rows:
        return
    graph = resources.graph_file(a.config.graph, resources.file_stamp(a.config.graph)) if a.config.graph else None
    ids, note = explore.driver_trajectories(kind, table.iloc[rows[0]], resources.analysis_records(chosen, info.stamp),
                                            graph)
    ids = explore.most_drifted_first(ids, trajs)  # the row opens its most drifted trajectory
    st.session_state[state.DRIVER_IDS] = ids
    st.session_state[state.DRIVER_NOTE] = note
    st.session_state[state.EXPLORER_VIEW] = "Trajectory"
    if ids:
        st.session_state[state.TRAJECTORY] = st.session_state[state.EXPLORER_TRAJECTORY] = ids[0]


if view == "Overview":
    s = a.summary
    branches = run_branches(a.config.checkpoints)  # CPO runs: branches of their start, not RFT steps
    # accuracy where some trajectory's gold answer was probed; none (every gold unread or unknown to the probe's
    # labels: accuracy NaN at every checkpoint) falls back to KL to base
    by_accuracy = probed and s["accuracy"].notna().any()
    worst = s.loc[s["accuracy"].idxmin()] if by_accuracy else s.loc[s["kl_base"].idxmax()]
    run = branches.get(worst["checkpoint"])
    alarm = a.changes[a.changes["page_hinkley_alarm"]] if "page_hinkley_alarm" in a.changes else a.changes.iloc[:0]
    measure, values = ("probe accuracy", s["accuracy"]) if by_accuracy else ("KL to base", s["kl_base"])
    if len(s) > 1 and values.nunique(dropna=False) == 1:  # idxmin would name the first one: none is worse
        worst_fact = ("Worst checkpoint", "none worse", f"{measure} {ui.amount(values.iloc[0])} at every one")
    else:
        worst_fact = ("Worst checkpoint", f"step {int(worst['step'])}" if run is None else f"CPO run from {run.start}",
                      f"{worst['checkpoint']} · {measure} {ui.amount(worst[values.name])}")
    facts = [("Trajectories", f"{trajs.shape[0]}", f"{len(s)} checkpoints"),
             worst_fact,
             ("Detrimental change", f"step {int(alarm.iloc[0]['to_step'])}" if len(alarm) else "none flagged",
              ("Page-Hinkley alarm" + (f" · {int(alarm.iloc[0]['n_pairs'])} trajectories" if "n_pairs" in alarm
                                       else "")) if len(alarm) else "per-trajectory test"),
             ("Max KL to base", ui.amount(s['kl_base'].max()), "nats, CoT tokens")]
    for col, (label, value, note) in zip(st.columns(len(facts)), facts, strict=True):
        col.metric(label, value, note, delta_color="off", delta_arrow="off", border=True)

    left, right = ui.side_by_side([3, 2])
    with left:
        st.markdown("**Across the checkpoints**: probe accuracy, belief, detrimental share and KL")
        st.caption("Probe accuracy: the answer the model gives when asked right after the trajectory's own CoT "
                   "(teacher-forced). It is not the Home page's accuracy, which decodes the whole CoT greedily.")
        ui.figure(charts.summary_over_steps(s, a.changes, branches), "summary-chart", "drift-summary",
                  title="Drift across the checkpoints (teacher-forced probe)")
    with right:
        st.markdown("**Probe accuracy per category**")
        cat = resources.category_accuracy(chosen, info.stamp)
        if cat.empty:
            st.info("The trajectories carry no gold labels.")
        else:
            ui.figure(charts.category_heatmap(cat, branches), "category-chart", "category-accuracy",
                      title="Probe accuracy per category")
    with st.expander("Per-checkpoint table and step tests", expanded=False):
        s = s.assign(branch_of=[branches[c].start if c in branches else "" for c in s["checkpoint"]])
        ui.table(s, "summary-table", "checkpoint-summary",
                 column_config={c: st.column_config.NumberColumn(charts.PROBE_ACCURACY if c == "accuracy" else None,
                                                                 format="%.4f") for c in s.columns[2:] if c != "branch_of"})
        ui.table(a.changes, "changes-table", "step-changes")

    if branches:
        ui.branch_comparison(chosen, info.stamp, branches)

    st.subheader("What drives the drift")
    st.caption("Effect drift: how much reading a token moves the belief in the gold answer, minus what the base "
               "model's belief did. Negative is detrimental. Pick a row to open the trajectories where it happens.")
    with ui.controls("Driver filters"):
        c1, c2, c3, c4 = st.columns([2, 2, 3, 2])
        kind = c1.radio("By", ["token", "concept", "context"], horizontal=True, key="driver_kind",
                        captions=None)
        ckpts = [c for c in s["checkpoint"] if c != "base"]
        ckpt = c2.selectbox("Checkpoint", ["all", *ckpts], index=ckpts.index(worst["checkpoint"]) + 1
                            if worst["checkpoint"] in ckpts else 0, key="driver_checkpoint")
        direction = c3.radio("Direction", ["detrimental", "beneficial", "all"], horizontal=True, key="driver_direction")
        words = c4.toggle("Words only", True, key="driver_words", disabled=kind != "token",
                          help="hide punctuation, the prompt's template (tokens read in every study, such as "
                               "'Question') and tokens read fewer than 3 times")
    table = {"token": a.by_token, "concept": a.by_concept, "context": a.by_context}[kind]
    if kind == "token" and words and not table.empty:
        table = explore.content_drivers(table, len(trajs))
    if table.empty:
        st.info(f"No {kind} table in this analysis" + (" (it was scored without a concept graph)." if kind == "concept" else "."))
    else:
        t = explore.sort_drivers(table, kind, ckpt, direction)
        shown = t.drop(columns=[c for c in ("trajectories",) if c in t]).head(200)
        ui.table(shown, f"drivers-{kind}", f"drivers-by-{kind}", on_select=lambda: open_driver(kind, t, f"drivers-{kind}"),
                 selection_mode="single-row", height=360)

else:
    st.caption("Checkpoints × tokens of one chain of thought. ▼ detrimental, ▲ beneficial positions "
               "(reading the token moved the belief in the gold answer by more than τ="
               f"{a.config.tau} against, or for, what the base model did).")
    with ui.controls("Find a trajectory"):
        c1, c2, c3 = st.columns([3, 2, 3])
        labels = sorted(trajs["gold"].dropna().unique())
        pick_labels = c1.multiselect("Gold label", labels, key="traj_labels")
        max_drift = None
        if trajs["drift"].notna().any():
            lo, hi = float(trajs["drift"].min()), float(trajs["drift"].max())
            lo, hi = round(lo - 0.005, 2), round(max(hi, lo + 0.01) + 0.005, 2)
            max_drift = c2.slider("Drift at most", lo, hi, hi, step=0.01, key="traj_max_drift",
                                  help="worst checkpoint's final gold belief minus the base's (negative: it fell)")
        contains = c3.text_input("Token or concept in the CoT", key="traj_contains", placeholder="e.g. opacity")
        ids = st.session_state.get(state.DRIVER_IDS)
        if ids is not None:
            note_col, clear_col = st.columns([5, 1])
            note_col.info(f"Showing the {len(ids)} trajectories of {st.session_state.get(state.DRIVER_NOTE, 'a driver')}.")
            if clear_col.button("Clear", key="clear_driver"):
                st.session_state[state.DRIVER_IDS] = None
                st.rerun()
    rows = explore.filter_trajectories(trajs, pick_labels, max_drift, contains, ids)
    if rows.empty:
        st.warning("No trajectory matches these filters.")
        st.stop()
    options = rows["traj_id"].tolist()
    state.persist(state.EXPLORER_TRAJECTORY, state.TRAJECTORY, options)
    by_id = rows.set_index("traj_id")
    c1, c2, c3 = st.columns([4, 3, 2])
    traj_id = c1.selectbox(f"Trajectory ({len(options)} match, most drifted first)", options, key=state.EXPLORER_TRAJECTORY,
                           format_func=lambda t: f"{t} · {by_id.at[t, 'gold']} · drift {by_id.at[t, 'drift']:+.2f}")
    st.session_state[state.TRAJECTORY] = traj_id
    shown_metrics = [m for m in explore.METRICS if probed or explore.METRICS[m][1] == "tokens"]
    metric = c2.selectbox("Colour by", shown_metrics, index=shown_metrics.index("effect_drift" if probed else "kl_base"),
                          format_func=lambda m: explore.METRICS[m][0], key="traj_metric")
    with_report = c3.toggle("Include the report", value=True, key="traj_report",
                            disabled=explore.METRICS[metric][1] != "effects",
                            help="belief metrics only: token metrics exist for the model's completion")
    r = by_id.loc[traj_id]
    records = resources.analysis_records(chosen, info.stamp)
    record = {x["id"]: x for x in records}.get(traj_id, {})
    heatmap_window.show(chosen, info.stamp, traj_id, metric, with_report)  # a window at a time when long
    left, right = st.columns([2, 3])
    with left:
        if probed:
            st.markdown(f"**Gold:** {r['gold']}  \n"  # each belief is in the gold answer, not in the answer given
                        f"**base answers** {r['base_answer']} · belief in the gold answer {r['base_belief']:.2f}  \n"
                        f"**{r['worst_checkpoint']} answers** {r['worst_answer']} · belief in the gold answer "
                        f"{r['worst_belief']:.2f}")
        ui.images(explore.images_of(records, traj_id), traj_id)  # the study's X-ray beside its CoT (none: text)
        st.text(f"{record.get('prompt', '')}\n\n{record.get('completion', '')}")
    with right:
        BELIEF_VIEWS = ["Gold answer, every checkpoint", "Every answer, one checkpoint"]
        belief_view = (st.segmented_control("Belief along the trajectory", BELIEF_VIEWS, default=BELIEF_VIEWS[0],
                                            key="traj_belief_view") or BELIEF_VIEWS[0]) if probed else None
        if belief_view is None:
            st.caption("No belief along the trajectory: it was scored without the answer probe.")
        elif belief_view == BELIEF_VIEWS[0]:
            ui.figure(resources.belief_lines(chosen, info.stamp, traj_id), "belief-lines", f"belief-{traj_id}",
                      title=f"Belief in the gold answer along {traj_id}")
        else:
            runs = run_branches(a.config.checkpoints)  # a CPO run right after its start, named as a run
            order = charts.branch_order(list(a.summary["checkpoint"]), runs)
            at = st.select_slider("Under checkpoint", order, value=r["worst_checkpoint"]
                                  if r["worst_checkpoint"] in order else order[-1], key="traj_checkpoint",
                                  format_func=lambda c: charts.branch_label(c, runs))
            ui.figure(resources.answer_distribution(chosen, info.stamp, traj_id, at), "answer-dist",
                      f"answers-{traj_id}-{at}", title=f"Every answer's belief along {traj_id} under {at}")
    if branches := run_branches(a.config.checkpoints):  # CPO runs: against their start, not the step before
        ui.branch_trajectory(chosen, info.stamp, traj_id, branches)
    if st.toggle("Token table (every score of this trajectory)", key="traj_token_table"):
        tok = resources.trajectory_rows(chosen, info.stamp, "tokens", traj_id, top_k=True).drop(columns=["traj_id"])
        ui.table(tok, "token-table", f"tokens-{traj_id}")
