"""CPO runs: launch a short counterfactual preference fine-tuning run, watch it live, cancel or resume it,
and compare the finished runs on the world's held-out sets. Runs are background jobs (``core.cpo.runs``)."""

import time
from pathlib import Path

import streamlit as st

from core.cpo import runs
from core.cpo.config import TrainConfig
from core.curation import snapshots
from core.jobs.registry import shell_command
from core.errors import InputError
from core.io.roots import refused_paths
from core.workspace.workspace import data_roots
from workbench import charts, forms, resources, state, ui
from workbench.safe_text import inert

st.title("CPO runs")
st.caption("Repair detrimental drift with Counterfactual Preference Optimization: chosen = the real chain of "
           "thought, rejected = its counterfactual. A run trains a LoRA adapter in the background (close the tab, "
           "it keeps going), then answers the world's held-out studies so runs can be compared.")

ws, world = ui.page_context()
# the TrainConfig fields this page sets itself: the world's base, the data picker, the run folder, the start,
# the run's base names, the visual pairs' weight; the pixel limits are shown for a vision-language world only
PAGE_SET = ("base_model", "data", "output_dir", "init_adapter", "resume", "base_names", "source_weights",
            "image_roots")
FIRST = ["max_steps", "learning_rate", "batch_size", "max_length"]


def fresh_name(objective: str) -> str:
    taken = {r.name for r in runs.list_runs(ws.store)}
    stem = f"{objective.replace('+', 'p')}-{time.strftime('%m%d-%H%M%S')}"
    return next(n for n in (stem if i == 0 else f"{stem}-{i + 1}" for i in range(len(taken) + 1)) if n not in taken)


# ---- launch ----------------------------------------------------------------------------------------------
with ui.controls("Launch a run", expanded=True):
    from core.cpo import train as cpo

    starts = [runs.START_BASE] + ([c.name for c in world.checkpoints] if world else [])
    worst = runs.default_start(world) if world else None
    c1, c2, c3 = st.columns(3)
    start = c1.selectbox("Start from", starts, index=starts.index(worst) if worst in starts else 0, key="run_start",
                         help="the drifted checkpoint to repair (default: the world's least accurate one), or the SFT base")
    # the objectives and the kinds of rejected side, with their descriptions, come from the config's fields
    choice = {name: forms.field(column, TrainConfig, name, "run") for column, name in ((c2, "objective"),
                                                                                        (c3, "negatives"))}
    objective = choice["objective"]
    # this world's curation exports only (snapshots of every world are the curation page's explicit choice)
    snaps = [s for s in snapshots.snapshots(ws.store, world.key if world else None) if snapshots.trainable(s)]
    plugin = world.plugin if world else None  # a world's own preference set and default lr (its plug-in)
    own = [plugin.preference_label] if hasattr(plugin, "preference_set") else []
    sources = [f"snapshot: {s.name} ({s.row_count} pairs)" for s in snaps] + own + ["a TRL preference file"]
    # the user's choice survives other pages; the default is never a snapshot too small to train on
    # (sources lists the snapshots first, then other kinds: zip stops at the last snapshot)
    chosen = st.session_state.get(state.RUN_DATA_WIDGET, st.session_state.get(state.RUN_DATA))
    st.session_state[state.RUN_DATA_WIDGET] = chosen if chosen in sources else next(
        (label for s, label in zip(snaps, sources, strict=False) if s.row_count >= cpo.MIN_PAIRS), own[0] if own else sources[0])
    data_choice = st.selectbox("Preference data", sources, key=state.RUN_DATA_WIDGET,
                               help=f"curation exports (TRL format) appear here as snapshots; one with fewer than "
                                    f"{cpo.MIN_PAIRS} pairs is never pre-selected")
    st.session_state[state.RUN_DATA] = data_choice
    data, snapshot = None, None
    roots = data_roots(ws.store, world and world.root)  # the file and every image it names must lie under them
    if data_choice.startswith("snapshot: "):
        snap = snaps[sources.index(data_choice)]
        data, snapshot = str(snap.path / "train.jsonl"), snap.name
    elif data_choice in own:
        data = resources.world_preferences(str(world.root), str(ws.uploads_dir / f"pairs-{world.fingerprint()}.jsonl"))
    else:
        data = st.text_input("Preference file (JSONL: prompt, chosen, rejected[, source, weight])", key="run_file").strip() or None
        for refused in refused_paths([data], roots):  # existence not told
            st.error(inert(refused))
            data = None
    defaults = runs.train_defaults(world, start)
    vl = bool(world and world.is_vl)  # its family reads images
    try:
        values = {**choice, **forms.settings(TrainConfig, FIRST, "run", defaults, columns=4)}
        with st.expander("More settings"):
            skip = PAGE_SET + ("objective", "negatives") + (() if vl else ("min_pixels", "max_pixels"))
            values |= forms.settings(TrainConfig, forms.others(TrainConfig, FIRST, skip), "run", defaults,
                                     columns=5)
            eval_limit = st.number_input("Evaluate on the first N held-out studies (0 = all)", 0, 1_000_000, 0,
                                         key="run_eval_limit", help="all of them for figures you report; fewer for a quick look "
                                         "(the start is then evaluated on the same N, to compare)")
            visual_weight = 0.0
            if vl:
                visual_weight = st.number_input(
                    "CPO++ weight of the visual pairs (source image_swap; 0 = as the pairs file says)", 0.0, 100.0, 0.0,
                    key="run_visual_weight", help="visual pairs keep the chain of thought and swap the study's image on "
                                                  "the rejected side; weights are normalised to mean one over all pairs")
    except ValueError as e:
        values, eval_limit, visual_weight = None, 0, 0.0
        st.error(inert(str(e)))
    if st.session_state.pop(state.RUN_NAME_FRESH, False) or not st.session_state.get(state.RUN_NAME):
        st.session_state[state.RUN_NAME] = fresh_name(objective)  # set before the widget: the field shows it
    name = st.text_input("Run name", key=state.RUN_NAME)

    cfg, problems = None, []
    if not world:
        problems.append("Open a world first: its base model and held-out sets are what a run trains and is judged on.")
    elif not data:
        problems.append("Choose the preference data.")
    elif values is not None:
        try:
            base_model, init_adapter = runs.start_point(world, start)  # a merged checkpoint is the run's base
            cfg = TrainConfig(
                base_model=base_model, data=data, output_dir=str(ws.cpo_run_dir(name)), init_adapter=init_adapter,
                base_names=[world.manifest.get("base_model_name", "") if init_adapter or base_model == str(
                    world.base_model_dir) else Path(base_model).name],
                source_weights={"image_swap": float(visual_weight)} if visual_weight > 0 else {},
                image_roots=[str(r) for r in roots], **values)
            check = resources.preflight(cfg)
            st.caption(f"Pre-flight: {check.pairs} pairs · {len(check.truncated)} whose reasoning max length would "
                       f"cut · {len(check.identical)} with identical chosen and rejected")
            for w in check.warnings:
                st.warning(inert(w))
            problems += list(check.errors)
        except (InputError, ValueError) as e:
            problems.append(str(e))
    for p in problems:
        st.error(inert(p))
    if cfg is not None and not problems:
        st.code(shell_command(*runs.train_command(cfg, world.root, int(eval_limit) or None)),  # config.json written
                language="bash")                                                             # first: it works now
        st.caption("The run trains in the background, then answers the world's held-out sets with the new adapter.")
        if st.button("Launch", type="primary", icon=":material/rocket_launch:", key="run_launch"):
            try:
                run = runs.launch(ws, cfg, name, world=world.root, snapshot=snapshot,
                                  evaluate_limit=int(eval_limit) or None)
                st.session_state[state.RUN_SELECTED] = run.id
                st.session_state[state.RUN_NAME_FRESH] = True  # the next run gets a fresh default name
                st.rerun()
            except InputError as e:
                st.error(inert(str(e)))


# ---- the runs --------------------------------------------------------------------------------------------
def runs_panel() -> None:
    runs.refresh_all(ws)
    all_runs = runs.list_runs(ws.store, world and world.root)  # the open world's runs
    if not all_runs:
        st.info("No run of this world yet." if world else "No run yet.")
        return
    ids = [r.id for r in all_runs]
    if st.session_state.get(state.RUN_SELECTED) not in ids:
        st.session_state[state.RUN_SELECTED] = ids[0]
    by_id = {r.id: r for r in all_runs}
    run = by_id[st.selectbox("Run", ids, key=state.RUN_SELECTED,
                             format_func=lambda i: f"{by_id[i].name} · {by_id[i].objective}")]
    job = run.job_handle()
    p = job.progress() if job else {"done": 0.0, "message": "", "elapsed_s": 0, "eta_s": None}
    m = runs.metrics(run)
    last = m.iloc[-1] if len(m) else None
    c1, c2 = st.columns([5, 1])
    if run.status == "running":
        tps, gb = (ui.number(last.get(k)) if last is not None else None for k in ("tokens_per_second", "gpu_memory_gb"))
        speed = f" · {tps:.0f} tokens/s" if tps is not None else ""  # null in the first lines of metrics.jsonl
        gpu = f" · GPU {gb:.1f} GB" if gb else ""
        c1.progress(min(1.0, p["done"]), text=f"{run.name}: running · {p['done']:.0%} · {p.get('message', '')} · "
                                              f"ETA {ui.duration(p['eta_s'])}{speed}{gpu}")
        if c2.button("Cancel", icon=":material/stop:", key="run_cancel"):
            runs.cancel(ws, run.id)
    else:
        c1.markdown(f"**{run.name}: {run.status}** after {ui.duration(p['elapsed_s'])}")
        if run.status in ("cancelled", "failed") and c2.button("Resume", icon=":material/play_arrow:", key="run_resume"):
            runs.resume(ws, run.id)
            st.rerun()
    if run.status == "failed":
        st.error(f"The run failed: {inert(run.error)}")
    elif run.status == "cancelled":
        st.warning(inert(run.error or "cancelled"))
    if len(m):
        ui.figure(charts.run_curves(m), "run-curves", f"run-{run.name}", title=f"Training curves of {run.name}")
    if run.evaluation:
        st.markdown("**On the held-out sets** (accuracy by greedy decoding of the whole CoT, as on Home)")
        before = runs.start_metrics(run.world, None, runs.start_name(run.world, run.config)) if run.world else None
        st.dataframe(runs.comparison([run], before), hide_index=True, key="run-eval")
        if worse := runs.worse_than_start(run.evaluation, before):
            start = runs.start_name(run.world, run.config)
            st.warning(f"This run left the model worse than its start ({inert(start)}) on the held-out sets: "
                       + "; ".join(worse) + ". Check the pre-flight warnings (tiny or unbalanced data?), the learning "
                       "rate and the number of steps.", icon=":material/trending_down:")
    with st.expander("Examples: what the run trains on"):
        examples(run)
    with st.expander("Log", expanded=run.status == "failed"):
        st.code(job.log_tail(25) if job else "(no job)", language="text")
    with st.expander("Config"):
        st.json(run.config)


def examples(run) -> None:
    """A few of the run's pairs: the study's image beside the chosen and rejected texts; a visual pair
    (same CoT, counterfactual image) shows each side with its own image."""
    from core.io.pairs import is_visual

    try:
        pairs = runs.examples(run)
    except InputError as e:
        st.warning(inert(str(e)))
        return
    for i, pair in enumerate(pairs):
        visual = is_visual(pair)
        st.markdown(f"**Pair {i + 1}** · source `{inert(pair['source'])}`" + (" · visual pair: same chain of "
                    "thought, the rejected side sees another image" if visual else ""))
        st.caption(inert(pair["prompt"]))
        if visual:
            for column, side, title in zip(st.columns(2), ("chosen", "rejected"), ("Chosen", "Rejected"), strict=True):
                with column:
                    ui.images(pair["images" if side == "chosen" else "rejected_images"], f"{title} side's image")
                    st.markdown(f"**{title}:** {inert(pair[side])}")
            continue
        picture, texts = st.columns([1, 2]) if pair["images"] else (None, st.container())
        if picture is not None:
            with picture:
                ui.images(pair["images"], "the study's image")
        texts.markdown(f"**Chosen:** {inert(pair['chosen'])}")
        texts.markdown(f"**Rejected:** {inert(pair['rejected'])}")


st.subheader("Runs")
ui.live_fragment(runs_panel, lambda: any(r.status == "running" for r in runs.list_runs(ws.store, world and world.root)),
                 state.RUNS_LIVE)

# ---- comparison ------------------------------------------------------------------------------------------
finished = [r for r in runs.list_runs(ws.store, world and world.root) if r.evaluation]  # this world's only
if finished:
    st.subheader("Compare")
    first = finished[-1]
    before = runs.start_metrics(first.world, None, runs.start_name(first.world, first.config)) if first.world else None
    table = runs.comparison(finished, before)
    if note := runs.start_note(finished, before, runs.start_name(first.world, first.config)):
        st.info(inert(note))  # a missing start row is said, never silent (it names runs and checkpoints)
    extra = resources.load_world(first.world).chart_metrics() if first.world and Path(first.world).is_dir() else {}
    ui.figure(charts.run_comparison(table, extra), "runs-compare", "runs-comparison",
              title="CPO runs on the held-out set")
    ui.table(table, "runs-compare-table", "runs-comparison")
