"""Page building blocks shared by every page: figures and tables with their downloads, tucked-away controls.

    ui.figure(fig, "heatmap", "drift-heatmap")      # chart + "HTML" download; PNG/SVG from the chart's camera
    ui.table(df, "drivers", "drift-drivers")        # dataframe + CSV download
    with ui.controls("Filters"): ...                # an expander, collapsed in presentation mode
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from workbench import figures, state
from workbench.safe_text import inert


# Page-wide rules (app.py renders them once): an image never runs past its column (a fixed width in a narrow
# column spilled over its neighbours); presentation mode enlarges the type and hides the sidebar's toggle.
STYLE = ("[data-testid='stColumn'] [data-testid^='stImage'] {max-width: 100%;} "
         "[data-testid='stColumn'] [data-testid^='stImage'] img {max-width: 100%; height: auto;}")
PRESENTATION_STYLE = ("html, .stMarkdown p, .stDataFrame {font-size: 1.25rem;} "
                      "[data-testid='stSidebarCollapsedControl'] {display: none;}")


def style() -> None:
    """The page-wide CSS (``STYLE``, and ``PRESENTATION_STYLE`` when presenting)."""
    presenting = st.session_state.get(state.PRESENTATION)
    st.html(f"<style>{STYLE} {PRESENTATION_STYLE if presenting else ''}</style>")


def _file_name(name: str) -> str:
    """A download's file name: the world first, then what the caller names (view, trajectory, checkpoint)."""
    return figures.file_name(state.world_path().name, name)


def figure(fig: go.Figure, key: str, name: str, title: str = "", **kwargs):
    """Show ``fig`` titled ``title`` (what it shows; the world is added), scaled up in presentation mode; the
    camera button saves it as PNG or SVG (the sidebar's choice) at a slide's size, and "Interactive HTML"
    offers it as a self-contained page (built only when clicked). Files are named world-``name``."""
    world = state.world_path().name
    fig = figures.finished(fig, f"{title} · {world}" if title else "")  # a copy: figures may come from a cache
    if st.session_state.get(state.PRESENTATION):
        fig = figures.scaled(fig, figures.PRESENTATION_SCALE)
    config = figures.plot_config(_file_name(name), st.session_state.get(state.FIG_FORMAT) or "png", fig)
    event = st.plotly_chart(fig, key=key, config=config, **kwargs)
    st.download_button("Interactive HTML", lambda: figures.html_file(fig, config), file_name=f"{_file_name(name)}.html",
                       mime="text/html", key=f"{key}-html", icon=":material/download:", type="tertiary",
                       on_click="ignore")
    return event


def table(df: pd.DataFrame, key: str, name: str, **kwargs):
    """Show ``df`` with readable column names (``column_labels``; a caller's ``column_config`` wins); offer it
    as CSV under its own column names (built only when clicked)."""
    config = column_labels(df.columns)
    for column, given in (kwargs.pop("column_config", None) or {}).items():  # a config without a label keeps ours
        config[column] = {**given, "label": given.get("label") or config.get(column)} if isinstance(given, dict) else given
    event = st.dataframe(df, key=key, hide_index=kwargs.pop("hide_index", True), column_config=config, **kwargs)
    st.download_button("CSV", lambda: df.to_csv(index=False), file_name=f"{_file_name(name)}.csv", mime="text/csv",
                       key=f"{key}-csv", icon=":material/download:", type="tertiary", on_click="ignore")
    return event


# Column names whose words alone would mislead or read as code; every other snake_case name shows with spaces.
COLUMN_LABELS = {
    "traj_id": "trajectory", "kl_base": "KL to base", "kl_prev": "KL to previous", "js_base": "JS to base",
    "js_prev": "JS to previous", "mean_kl_base": "mean KL to base", "mean_effect_drift": "mean effect drift",
    "follows_image": "answer = swapped image's label", "flip_rate": "flip rate", "n": "count",
    "final_gold_prob": "final gold belief", "gold_prob": "gold belief", "logprob": "log-prob",
}


def column_labels(columns) -> dict:
    """Streamlit column labels for raw table columns: ``COLUMN_LABELS``, else the name with spaces."""
    return {c: COLUMN_LABELS.get(c, c.replace("_", " ")) for c in columns
            if isinstance(c, str) and (c in COLUMN_LABELS or "_" in c)}


def controls(label: str, expanded: bool = True):
    """A container for a page's settings: open normally, tucked into a closed expander when presenting."""
    return st.expander(label, expanded=expanded and not st.session_state.get(state.PRESENTATION, False))


def side_by_side(spec: list[int]) -> list:
    """Columns for charts that sit side by side on a screen; stacked, each the page's whole width, when presenting
    (a chart's larger type in a narrow column left no room for its labels)."""
    if st.session_state.get(state.PRESENTATION):
        return [st.container() for _ in spec]
    return list(st.columns(spec))


def number(value) -> float | None:
    """``value`` as a float, or None when it is missing, null or NaN (so ``f"{x:.0f}"`` is never handed None)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def amount(value, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or in scientific notation when those would round a non-zero value to
    zero (a KL of 2.6e-4 is drift, not "0.00"); "–" when it is missing or not a number."""
    x = number(value)
    if x is None:
        return "–"
    if x != 0 and abs(x) < 0.5 * 10 ** -digits:
        return f"{x:.1e}"
    return f"{x:.{digits}f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def live_fragment(body, is_live, flag: str) -> None:
    """Draw ``body()`` in a fragment that redraws itself every second while ``is_live()``; when the last live
    thing ends, the whole page reruns once (``flag`` in the session remembers it was live)."""
    def panel() -> None:
        body()
        if is_live():
            st.session_state[flag] = True
        elif st.session_state.pop(flag, False):
            st.rerun()  # it just ended: redraw the page around it

    st.fragment(panel, run_every=1.0 if is_live() else None)()


def jobs_panel(job_dirs, kind: str, done_actions, limit: int = 5, select=None, world=None) -> None:
    """The latest background jobs of ``kind`` (of the folder ``world``, when given: the open world's, and apart, in
    an expander, those that record no world: started before jobs recorded theirs; those ``select(job)`` keeps, if
    given): live progress with ETA and Cancel while running (the panel redraws itself every second), the log when
    one fails, and ``done_actions(job, main, side)`` to show or open a finished job's result. When the last running
    job ends, the whole page reruns."""
    from core.jobs import supervisor as jobs

    def latest() -> tuple[list, list]:
        """(the world's jobs, those of no recorded world), ``limit`` each, newest first: one listing of the job
        folders (the panel and its liveness check list them every second while a job runs)."""
        found = [j for j in jobs.list_jobs(job_dirs, kind) if select is None or select(j)]
        if world is None:
            return found[:limit], []
        key = jobs.world_key(world)
        return ([j for j in found if j.meta.get("world") == key][:limit],
                [j for j in found if not j.meta.get("world")][:limit])

    def panel() -> None:
        mine, old = latest()
        for job in mine:
            _job_card(job, done_actions)
        if old:
            with st.expander(f"Jobs of no recorded world ({len(old)}{'+' if len(old) == limit else ''}): started "
                             "before jobs recorded their world", icon=":material/help:"):
                for job in old:
                    _job_card(job, done_actions)

    live_fragment(panel, lambda: any(j.state() == "running" for j in sum(latest(), [])), state.running_flag(kind))


def _job_card(job, done_actions) -> None:
    """One job of ``jobs_panel``: title, state and duration; progress and Cancel while it runs; what it did."""
    status, p = job.state(), job.progress()
    with st.container(border=True):
        main, side = st.columns([5, 1])
        cancelling = status == "running" and job.cancelling
        shown = "cancelling…" if cancelling else status
        main.markdown(f"**{inert(job.title)}** · {shown} · {duration(p['elapsed_s'])}")
        if status == "running":
            what = "stopping after the current step" if cancelling else inert(p.get("message", ""))
            main.progress(min(1.0, p["done"]), text=f"{p['done']:.0%} · {what} · ETA {duration(p['eta_s'])}")
            # on_click: the cancel is asked before this rerun draws the panel, so it shows at once
            side.button("Cancel", key=f"cancel-{job.id}", icon=":material/stop:", on_click=job.cancel,
                        disabled=cancelling)
        elif status == "done":
            done_actions(job, main, side)
        elif p.get("message"):  # what a cancelled or failed job did before it stopped (what it stored)
            main.caption(f"Last report: {inert(p['message'])}")
        if status != "done":
            with main.expander("Log", expanded=status in ("failed", "died")):
                st.code(job.log_tail(15) or "(empty)", language="text")


def branch_comparison(path: str, stamp: str, branches: dict) -> None:
    """Start vs repaired for one CPO run of the analysis at ``path`` (``core.models.branches.compare``): the two models
    side by side, the trajectories whose probed answer flipped, the CoT tokens whose probability moved most."""
    from workbench import resources

    st.subheader("Start vs repaired")
    name = pick_branch(branches, "branch_run")
    cmp = resources.branch_comparison(path, stamp, branches[name].start, name)
    st.caption("Probe accuracy and belief are teacher-forced on the same trajectories (probe accuracy over the "
               "'probed' ones: those whose own answer was read); 'fixed' = wrong at the "
               "start, right after the run; 'broken' = the reverse. kl_to_start: mean per-token KL(repaired ‖ "
               "start) over the CoT (empty for analyses scored before runs were measured from their start).")
    table(cmp.summary, "branch-summary", f"start-vs-{name}")
    counts = cmp.flips["flip"].value_counts()
    st.markdown(" · ".join(f"**{counts.get(k, 0)}** {k}" for k in ("fixed", "broken", "changed")))
    left, right = st.columns(2)
    with left:
        st.markdown("**Trajectories whose answer flipped**")
        table(cmp.flips, "branch-flips", f"flips-{name}")
    with right:
        st.markdown("**CoT tokens whose log-probability moved most** (repaired minus start)")
        table(cmp.tokens, "branch-tokens", f"tokens-{name}")


def pick_branch(branches: dict, key: str) -> str:
    names = list(branches)
    return st.selectbox("CPO run", names, key=key,
                        format_func=lambda n: f"{n} (from {branches[n].start}, {branches[n].run_steps} steps)")


def branch_trajectory(path: str, stamp: str, traj_id: str, branches: dict) -> None:
    """The trajectory under a CPO run's start and the repaired model: belief paths on one plot, per-token
    KL(repaired ‖ start) and log-prob change below."""
    from workbench import resources

    st.markdown("**Start vs repaired on this trajectory**")
    name = pick_branch(branches, "traj_branch_run")
    figure(resources.start_vs_repaired(path, stamp, traj_id, branches[name].start, name), "branch-trajectory",
           f"start-vs-{name}-{traj_id}", title=f"{traj_id} under {branches[name].start} and the CPO run {name}")


def world_picker() -> None:
    """The sidebar's world picker: the worlds this workspace knows (``core.workspace.world.known_worlds``: its own, those
    registered or opened before; ``workbench demo`` registers the sample worlds)."""
    from core.workspace import world
    from workbench import resources

    if state.NEXT_WORLD in st.session_state:  # set by a page that created a world (before this widget exists)
        st.session_state[state.WORLD_PATH] = st.session_state.pop(state.NEXT_WORLD)
    ws = resources.workspace(st.session_state[state.WORKSPACE_PATH])
    options = [str(p) for p in world.known_worlds(ws.root, ws.store)]
    current = st.session_state[state.WORLD_PATH]
    if current not in options:
        options.insert(0, current)
    # The widget is keyed by the world it opens on, and starts there (index), so WORLD_PATH is never the widget's
    # own state: keyed on WORLD_PATH, a browser that remounted the sidebar (a page switch while a run was going)
    # showed the first option, sample_data, and its next interaction silently switched the session to that world.
    key = state.world_picker(current)
    st.selectbox("World", options, index=options.index(current), key=key, on_change=_pick_world, args=(key,),
                 format_func=lambda p: Path(p).name,
                 help="the worlds this workspace knows: your own (Checkpoints page: Local folders -> Keep these "
                      "as a world; or `workbench world create`) and those opened before (`workbench demo` adds the "
                      "sample worlds)")


def _pick_world(key: str) -> None:
    if st.session_state[key] != st.session_state.get(state.WORLD_PATH):
        state.leave_world()  # the last world's analysis, trajectory and previews are not the new one's
    st.session_state[state.WORLD_PATH] = st.session_state[key]


def page_context(world_required: bool = False, note: str = ""):
    """Every page's preamble: defaults filled, then ``(workspace, world)``. A workspace that cannot be opened
    stops the page with one error; so does the world when the page needs one, otherwise it is None with a
    warning (``note`` says what the page offers instead)."""
    from core.errors import InputError
    from workbench import resources

    state.init()
    try:
        ws = resources.workspace(st.session_state[state.WORKSPACE_PATH])
    except InputError as e:
        _unusable("workspace", e)
    try:
        return ws, resources.load_world(str(state.world_path()))
    except InputError as e:
        if world_required:
            _unusable("world", e)
        st.warning(inert(f"Cannot open the world: {e}{note}"))
        return ws, None


def _unusable(what: str, error: Exception) -> None:
    """The one way a page shows what it cannot open: an error naming it, then the page stops."""
    st.error(inert(f"Cannot open the {what}: {error}"))
    st.stop()


def world_analyses(ws, world) -> tuple[list, list]:
    """(the open world's analyses, the other worlds') of the workspace (``core.drift.analysis.of_world``: its
    shipped one, those its scoring jobs wrote, those of its datasets and base); with no world open, all are its."""
    from core.drift.analysis import list_analyses, of_world
    from core.jobs.supervisor import list_jobs

    from core.watch.views import watch_analyses

    found = list_analyses(ws.analyses_dir, world.analysis_dir if world else None)
    watched = list_analyses(*watch_analyses(ws.root))  # a watched training run's: of no world, always offered
    if world is None:
        return sorted(found + watched, key=lambda a: a.created, reverse=True), []
    own = of_world(found, world, {j.meta.get("out", "") for j in list_jobs(ws.job_dirs, "score", world.root)})
    return sorted(own + [w for w in watched if w not in own], key=lambda a: a.created, reverse=True), \
        [a for a in found if a not in own]


def pick_analysis(ws, world, widget_key: str, label: str, empty: str):
    """A picker over the workspace's analyses and the world's shipped one (the session's choice kept
    across pages); stops the page with ``empty`` and a link to Checkpoints when there is none."""
    from workbench import routes

    found, others = world_analyses(ws, world)  # the open world's; another world's only when the user asks
    asked = [a for a in others if str(a.path) == st.session_state.get(state.ANALYSIS)]  # opened from elsewhere
    if others and st.toggle(f"Also the {len(others)} analyses of other worlds", key=f"{widget_key}_every_world"):
        found = sorted(found + others, key=lambda a: a.created, reverse=True)
    elif asked:  # the session's analysis (a link, another page, a watch) stays shown though it is another world's
        found = sorted(found + asked, key=lambda a: a.created, reverse=True)
    if not found:
        st.info(empty)
        st.page_link(routes.checkpoints(), label="Go to Checkpoints")
        st.stop()
    paths = [str(a.path) for a in found]
    state.persist(widget_key, state.ANALYSIS, paths)
    with controls(label):
        chosen = st.selectbox(label, paths, key=widget_key, label_visibility="collapsed",
                              format_func=lambda p: found[paths.index(p)].describe())
    st.session_state[state.ANALYSIS] = chosen
    return found[paths.index(chosen)]


def images(paths: list[str] | None, caption: str = "", width: int | str | None = None) -> None:
    """A trajectory's images beside its text (a study's X-ray): each read through ``core.io.images`` (size and
    pixel limits checked), shown at a readable width (``width``: pixels or "stretch", default 300 px, 520 in
    presentation mode; never wider than its column, ``STYLE``); a missing or unreadable file is named in a
    warning instead of breaking the page. Nothing is drawn for a text-only record."""
    from core.errors import InputError
    from core.io.images import ImageRef, load_image

    if not paths:
        return
    width = width or (520 if st.session_state.get(state.PRESENTATION) else 300)
    columns = st.columns(len(paths)) if len(paths) > 1 else [st.container()]
    for i, (path, column) in enumerate(zip(paths, columns, strict=True)):
        try:
            picture = load_image(ImageRef(Path(path), f"{caption or 'image'} {i + 1}"))
        except InputError as e:
            column.warning(inert(str(e)))
            continue
        label = f"{caption} ({i + 1}/{len(paths)})" if caption and len(paths) > 1 else caption or Path(path).name
        column.image(picture, caption=inert(label), width=width)
