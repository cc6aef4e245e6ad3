"""Watch: training jobs whose checkpoints are scored as the trainer saves them (``core.watch``). Live: the drift
curves beside the trainer's own loss and reward, alarms with their evidence, the step being scored and the lag;
Stop; when the run has ended, *Open as a world*."""

import pandas as pd
import streamlit as st

from core.errors import InputError
from core.watch import views
from core.watch.config import WatchConfig
from core.watch.job import launch
from workbench import forms, routes, state, ui, watch_charts
from workbench.safe_text import inert

if st.session_state.pop(state.OPEN_EXPLORER, False):
    st.switch_page(routes.explorer())
st.title("Watch")
st.caption("A running job's chain-of-thought drift, step by step: each checkpoint is recorded as the trainer saves "
           "it (before its rotation deletes it) and scored beside the trainer against the base and the previous step.")

ws, world = ui.page_context()
watches = [str(p) for p in views.list_watches(ws.root)]
if not watches:
    st.info("No watched run in this workspace yet. Attach the callback to your trainer, or follow any trainer's "
            "folder, then start the scorer:")
    st.code("workbench watch plugin --out cot_drift_watch.py      # the callback (TRL, HF Trainer, ms-swift plugin)\n"
            "workbench watch --run RUN/watch --base BASE --data probe.jsonl\n"
            "workbench watch --run /runs/verl/ckpts --out watch/ --world WORLD   # any trainer's folder\n"
            "workbench demo --watch                              # a live GRPO run on the sample world", language="bash")
    st.stop()
state.persist(state.WATCH_PICK, state.WATCH, watches)
chosen = st.selectbox("Watched run", watches, key=state.WATCH_PICK, format_func=lambda p: p.rsplit("/", 1)[-1])
st.session_state[state.WATCH] = chosen


def open_in_explorer(view: views.WatchView, alarm: dict) -> None:
    """The explorer on the watch's analysis, filtered to the trajectories that drove ``alarm``."""
    listed = (alarm.get("evidence") or {}).get("trajectories")  # a list of ids (a string or a number: none)
    ids = [i for i in listed if isinstance(i, str)] if isinstance(listed, list) else []
    st.session_state[state.ANALYSIS] = st.session_state[state.EXPLORER_ANALYSIS] = str(view.analysis)
    st.session_state[state.DRIVER_IDS] = ids or None
    st.session_state[state.DRIVER_NOTE] = f"alarm {alarm.get('rule', '?')} at step {alarm.get('step', '?')}"
    st.session_state[state.EXPLORER_VIEW] = "Trajectory"
    if ids:
        st.session_state[state.TRAJECTORY] = st.session_state[state.EXPLORER_TRAJECTORY] = ids[0]
    st.session_state[state.OPEN_EXPLORER] = True  # switch_page cannot run inside the live fragment
    st.rerun(scope="app")


def header(view: views.WatchView) -> None:
    lag = view.lag()
    scoring = view.status.get("scoring") or {}
    facts = [("Trainer", view.trainer_state, f"step {lag['trainer_step'] or '–'} of {view.trainer.get('max_steps') or '–'}"),
             ("Scorer", view.scorer_state, f"scoring step {scoring['step']}" if scoring else "idle"),
             ("Lag", f"{lag['queued']} queued", f"oldest {ui.duration(lag['seconds'])}" if lag["seconds"] else "caught up"),
             ("Scored", f"{len(view.steps)} steps", f"last step {lag['scored_step'] or '–'}"),
             ("Alarms", f"{len(view.alarms)}", view.alarms[-1].get("rule", "?") if view.alarms else "none")]
    for col, (label, value, note) in zip(st.columns(len(facts)), facts, strict=True):
        col.metric(label, value, note, delta_color="off", delta_arrow="off", border=True)


def alarms(view: views.WatchView) -> None:
    st.subheader("Alarms")
    if not view.alarms:
        st.caption("None so far.")
        return
    for i, alarm in enumerate(reversed(view.alarms)):
        with st.container(border=True):
            main, side = st.columns([5, 1])
            main.markdown(f"**Step {alarm.get('step')} · {inert(alarm.get('rule', ''))}** · {inert(alarm.get('message', ''))}")
            for name, table in watch_charts.evidence_tables(alarm).items():
                with main.expander(f"Evidence: {name}", expanded=False):
                    ui.table(table, f"evidence-{i}-{name}", f"alarm-{alarm.get('step')}-{name}")
            if view.analysis and side.button("Explorer", key=f"alarm-open-{i}", icon=":material/open_in_new:",
                                             help="the Drift explorer on this watch, the alarm's trajectories"):
                open_in_explorer(view, alarm)


def stop(view: views.WatchView) -> None:
    """Stop (in the live panel: it appears once the trainer runs)."""
    if view.has_callback and view.trainer_state == "running":
        asked = view.stop_asked
        if asked is not None:
            st.info(f"Stop asked ({inert(asked.get('by', ''))}): the trainer ends at its next step.")
        elif st.button("Stop training", key="watch_stop", icon=":material/stop_circle:", type="primary",
                       help="the callback ends training at its next step (control.should_training_stop)"):
            view.stop("the Watch page")
            st.rerun()
    elif view.trainer_state == "stopped" and view.trainer.get("stop_reason"):
        st.info(f"Training stopped at step {view.trainer.get('global_step', '–')}: "
                f"{inert(str(view.trainer['stop_reason']))}.")
    elif not view.has_callback:
        st.caption("Followed from its folder (no callback): Stop cannot reach this trainer.")


def live() -> None:
    try:
        view = views.WatchView.open(chosen)
    except InputError as e:
        st.error(inert(str(e)))
        return
    header(view)
    stop(view)
    if view.status.get("state") == "failed":
        st.error(f"The scorer failed: {inert(view.status.get('error', ''))}")
    ui.figure(watch_charts.watch_curves(view.summary(), view.log_history(), view.alarms), "watch-curves",
              f"watch-{view.name}")
    alarms(view)
    for problem in view.problems:  # a field of the watch's files that is not what its writer writes: left out, said
        st.warning(inert(problem))


def is_live(path: str) -> bool:
    try:
        return views.WatchView.open(path).live
    except InputError:
        return False


ui.live_fragment(live, lambda: is_live(chosen), state.running_flag("watch-live"))

SCORER_SHOWN = ["limit", "device", "dtype", "decode"]


def start_scorer(view: views.WatchView) -> None:
    """Start the scorer as a background job (kind ``watch``): with the watch's saved settings when it was scored
    before (it resumes at the first unscored step), else on the open world's probe set with the settings below."""
    saved = view.config()
    if saved:
        st.caption("Resumes at the first unscored step, with the settings this watch was scored with.")
        values, make = {}, lambda: WatchConfig.from_dict({**saved, "once": False}, str(view.out / "config.json"))
    elif world is None:
        st.info("Open a world (its base model and probe set) to score this watch from here, or start "
                f"`workbench watch --run {inert(str(view.out))} --base BASE --data FILE --job`.")
        return
    else:
        st.caption(f"Probe set and base model: the world {inert(world.name)}'s.")
        values = forms.settings(WatchConfig, SCORER_SHOWN, "watch")
        make = lambda: WatchConfig(run=str(view.out), world=str(world.root), **values)  # noqa: E731
    if st.button("Start the scorer", key="watch_start_scorer", icon=":material/play_arrow:",
                 help="a background job: progress and Cancel below; it scores each recorded checkpoint in turn"):
        try:
            job = launch(ws, make())
        except (InputError, ValueError) as e:
            st.error(inert(str(e)))
        else:
            st.success(f"Scorer job {inert(job.id)} started.")


def scorer_done(job, main, side) -> None:
    said = [line for line in job.log_tail(40).splitlines() if line.startswith("workbench: watch scored")]
    main.caption(inert(said[-1].removeprefix("workbench: ")) if said else "Finished.")


view = views.WatchView.open(chosen)
st.subheader("Scorer")
if view.needs_scorer:
    start_scorer(view)
ui.jobs_panel(ws.jobs_dir, "watch", scorer_done, select=lambda job: job.meta.get("out") == str(view.out.resolve()))

if view.finished:
    name = st.text_input("World name", value=view.name, key=state.WATCH_WORLD_NAME)
    if st.button("Open as a world", key="watch_world", icon=":material/public:",
                 help="the kept checkpoints and this watch's analysis become a world (explorer, counterfactuals, "
                      "curation and CPO runs work on it)"):
        try:
            made = views.open_as_world(chosen, ws.root, name)
        except InputError as e:
            st.error(inert(str(e)))
        else:
            ws.store.register_world(made.name, made.root, made.fingerprint())
            st.session_state[state.NEXT_WORLD] = str(made.root)
            st.session_state[state.ANALYSIS] = str(made.analysis_dir)
            st.success(f"World {inert(made.name)} created; the explorer opens it.")
            st.page_link(routes.explorer(), label="Open the Drift explorer", icon=":material/stacked_line_chart:")
with st.expander("Recorded checkpoints and settings", expanded=False):
    ui.table(pd.DataFrame(view.recorded()), "watch-recorded", f"watch-{view.name}-checkpoints")
    st.json(view.config(), expanded=False)
