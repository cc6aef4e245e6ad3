"""Checkpoints: pick a base model, its RFT checkpoint series and a trajectory set, then score them.

Scoring runs as a background job (``core.jobs.supervisor``): it keeps going when the tab closes, the page re-attaches
to it, and Cancel stops it at the next batch. Results land in the workspace's analyses/ folder.
"""

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from core.cpo import runs
from core.drift.config import AnalysisConfig
from core.drift.job import ScoreOptions
from core.errors import InputError
from core.io.paths import expand
from core.io.roots import refused_paths, search_roots
from core.jobs import registry
from core.jobs import supervisor as jobs
from core.models import checkpoints as ckpts
from core.models.branches import branch_of
from core.models.series import adapter_name, base_name_warnings, plan_series
from core.models.families import family_for
from core.workspace import world as world_mod
from workbench import forms, resources, routes, state, ui
from workbench.safe_text import inert

if st.session_state.pop(state.OPEN_EXPLORER, False):
    st.switch_page(routes.explorer())
st.title("Checkpoints")
st.caption("Choose the base model and its checkpoint series, the trajectories to analyse, and score them: "
           "every token under every checkpoint, and the answer probe along each chain of thought.")

ws, world = ui.page_context(note="; give local folders instead.")
roots = search_roots(ws.root, world and world.root)
# the analysis fields this page sets itself (the series and data pickers, the limit beside Score), and
# trust_remote_code: running a model folder's own code is asked for on the command line only
PAGE_SET = ("base", "checkpoints", "base_names", "data", "graph", "limit", "trust_remote_code")


def score_scope(limit: int, total: int | None, name: str) -> str:
    """What the Score button will score, in words: never "the first 50 of 3"."""
    if total is None:
        return f"Scores the first **{limit}** trajectories" if limit else "Scores all the trajectories"
    if not limit or limit >= total:
        return f"Scores all **{total}** trajectories in `{name}`"
    return f"Scores the first **{limit}** of **{total}** trajectories in `{name}`"


def picker(label: str, candidates: list[Path], key: str, help_: str) -> str:
    """A folder: typed, or picked from what was found under the data roots."""
    c1, c2 = st.columns([3, 2])
    found = c2.selectbox("Found under the data roots", ["—", *map(str, candidates)], key=f"{key}_found",
                         help="searched: " + ", ".join(map(str, roots)))
    if found != "—" and st.session_state.get(state.last_found(key)) != found:
        st.session_state[key] = found  # picking fills the text field, which stays editable
        st.session_state[state.last_found(key)] = found
    return c1.text_input(label, key=key, help=help_, placeholder="/path/to/folder").strip()


# ---- 1. the checkpoint series --------------------------------------------------------------------------
st.subheader("1 · Checkpoint series")
sources = (["This world"] if world else []) + ["Local folders"]
source = st.radio("Series", sources, horizontal=True, key="ck_source", label_visibility="collapsed")
problems: list[str] = []
base_names: list[str] = []
graph = None
if source == "This world":
    arg = world.checkpoints_arg
    base, series_arg = str(world.base_model_dir), ";".join(arg) if isinstance(arg, list) else arg
    graph = str(world.graph_path)
    base_names = [world.manifest.get("base_model_name", "")]
    st.caption(f"`{world.root}`: base `{Path(base).name}/`, checkpoints `{Path(series_arg).name}/`")
    finished = runs.finished_for_world(ws.store, world.root)
    if finished:
        joined = st.multiselect("Add finished CPO runs to the series", [r.name for r in finished], key="ck_runs",
                                help="each run's adapter joins as a branch of the checkpoint it started from: "
                                     "the explorer draws it above its start, not on the RFT step axis, and "
                                     "compares start vs repaired (flips, belief, tokens)")
        if joined:
            series_arg = runs.series_with_runs([c.path for c in world.checkpoints],
                                               [r for r in finished if r.name in joined])
else:
    models, series_dirs = ckpts.find_candidates(roots)
    base = picker("Base model folder", models, "ck_base", "config.json, weights and tokenizer of the model RFT started from")
    series_arg = picker("Checkpoints", series_dirs, "ck_series",
                        "a trainer output folder with checkpoint-N/ (nested v0-*/checkpoint-N too), "
                        "or several checkpoint folders in order, separated by ';'")
    graph = st.text_input("Concept graph (optional)", key="ck_graph", placeholder="concept_graph.json",
                          help="node-link JSON; its diseases become the answer labels, its findings the concepts").strip() or None
    names = st.text_input("Other names of the base model (optional)", key="ck_base_names",
                          help="adapters record base_model_name_or_path; list the names that mean this base, ';'-separated")
    base_names = [n.strip() for n in names.split(";") if n.strip()]
    problems += refused_paths([base, *series_arg.split(";"), graph], roots)  # one message, existence not told
    if not base:
        problems.append("Give the base model folder.")
    elif graph and not problems and not expand(graph).is_file():
        problems.append(f"{graph}: concept graph file not found")

family = None
if base and not problems:
    try:  # the base's family (core.models.families): an unsupported model_type is named here, before scoring
        family = family_for(ckpts.check_model_dir(base))
    except InputError as e:
        problems.append(str(e))
checkpoint_list = [s.strip() for s in series_arg.split(";") if s.strip()] if series_arg else []
checkpoints_value = checkpoint_list[0] if len(checkpoint_list) == 1 else (checkpoint_list or None)
dev = resources.device_info()
vl = bool(family is not None and family.reads_images)  # a base that reads images: its image settings too
with ui.controls("Device and settings", expanded=False):
    shown = ["device", "dtype", "positions", "batch_size", "top_k", "include_prompt", "chat_template"]
    settings = forms.settings(AnalysisConfig, shown, "ck", helps={"device": f"auto: {dev.describe()}"})
    # a world's own runs are probed as its completions answer (world.json's answer_format), as from_world does
    mine = None
    if world and source == "This world":
        try:
            mine = world.answer_settings()  # the answer template and format
        except InputError as e:  # a bad answer_format in world.json: named, the default template kept
            problems.append(str(e))
    settings |= forms.settings(AnalysisConfig, forms.others(AnalysisConfig, shown, PAGE_SET + (
        () if vl else ("min_pixels", "max_pixels"))), "ck", defaults=mine)
device, dtype = settings["device"], settings["dtype"]

infos = []
if base and not problems:
    try:
        ckpts.check_model_dir(base)
        _, infos, dev_name, torch_dtype = plan_series(base, checkpoints_value, device, dtype)
    except InputError as e:
        problems.append(str(e))
    except ValueError as e:
        problems.append(f"Settings: {e}")
if infos:
    branch = {c.path: branch_of(c.path) for c in infos}  # CPO runs: a branch of their start, not an RFT step
    # a CPO run has no place on the RFT step axis: no step, the checkpoint it branched from instead
    st.dataframe(pd.DataFrame([{"checkpoint": adapter_name(c), "step": None if branch[c.path] else c.step, "kind": c.kind,
                                "branch_of": f"{b.start} + {b.run_steps} CPO steps" if (b := branch[c.path]) else "",
                                "objective": c.training.get("objective"), "LoRA r": c.training.get("lora_rank"),
                                "lr": c.training.get("lr"), "reward": c.training.get("reward"),
                                "pairs ranked right": c.training.get("preference_accuracy"),  # DPO / CPO logs
                                "loss": c.training.get("loss"), "path": str(c.path)}
                               for c in infos]), hide_index=True, key="ck_table",
                 column_config={"branch_of": "CPO run from",
                                "reward": st.column_config.NumberColumn(format="%.3f", help="an RL trainer's reward"),
                                "pairs ranked right": st.column_config.NumberColumn(
                                    format="%.3f", help="a preference trainer's rewards/accuracies"),
                                "loss": st.column_config.NumberColumn(format="%.4f"),
                                "lr": st.column_config.NumberColumn(format="%.1e")})
    for note in base_name_warnings(base, infos, base_names):  # a hint, not proof: never a refusal
        st.warning(inert(note), icon=":material/info:")
    st.caption(f"{len(infos)} checkpoints plus the base · scoring on **{dev_name}** in **{str(torch_dtype).removeprefix('torch.')}**")
elif base and not problems and not checkpoints_value:
    st.info("No checkpoints given: only the base model will be scored.")

# ---- 2. the trajectories -------------------------------------------------------------------------------
st.subheader("2 · Trajectories")
kinds = (["A world dataset"] if world and source == "This world" else []) + ["A JSONL file", "Upload",
                                                                                     "Curation database"]
data_kind = st.radio("Trajectories", kinds, horizontal=True, key="ck_data_kind", label_visibility="collapsed")
data = None
if data_kind == "A world dataset":
    names = [n for n in world.manifest["datasets"] if n != "sft"] or list(world.manifest["datasets"])
    dataset = st.selectbox("Dataset", names, key="ck_dataset",
                           format_func=lambda n: f"{n} ({world.manifest['datasets'][n]['records']} trajectories)")
    data = str(world.dataset_path(dataset))
elif data_kind == "Curation database":
    from core.curation.queue import trajectories_file

    try:
        data = str(trajectories_file(ws.store, ws.uploads_dir, world.key if world else None))  # this world's
    except InputError as e:
        problems.append(str(e))
elif data_kind == "A JSONL file":
    data = st.text_input("Trajectories file", key="ck_data", placeholder="/path/to/trajectories.jsonl",
                         help="one JSON object per line with prompt, completion (<think> … </think> answer) and label").strip() or None
    if refused := refused_paths([data], roots):
        problems += refused
        data = None
else:
    up = st.file_uploader("Trajectories (.jsonl)", type=["jsonl"], key="ck_upload")
    if up is not None:
        try:
            data = str(ws.keep_upload(up.name, up.getvalue()))
        except InputError as e:
            problems.append(str(e))
total = None  # trajectories in the chosen file, shown beside the Score button's limit
if data:
    try:
        # a typed or uploaded file's image paths are typed paths too; a world's own datasets were checked when
        # the world was made (their images may lie beside the run, outside the world folder)
        typed = data_kind not in ("A world dataset", "Curation database")
        total = len(resources.records(data, None, resources.file_stamp(data),
                                      tuple(map(str, roots)) if typed else None))
        st.caption(f"`{data}`: {total} trajectories")
    except InputError as e:
        problems.append(str(e))
elif not problems:
    problems.append("Choose the trajectories to analyse.")
if source == "Local folders" and base and data and not problems:
    with st.expander("Keep these as a world of your own", icon=":material/public:"):
        c1, c2 = st.columns(2)
        world_name = c1.text_input("World name", key="ck_world_name", placeholder="my-grpo-run")
        held = c2.text_input("Held-out labelled set (optional)", key="ck_world_eval",
                             help="trajectories with a label (or an answer): evaluates checkpoints and CPO runs").strip()
        if st.button("Create the world", key="ck_world_create", disabled=not world_name.strip(),
                     help="writes a world.json under the workspace naming these folders; nothing is copied"):
            try:
                if refused := refused_paths([held], roots):  # checked like every typed path: existence not told
                    raise InputError(refused[0])
                start = graph or (world and world.graph_path)  # the open world's graph, to edit
                new = world_mod.create_world(world_mod.world_dir(ws.root, world_name), world_name, base,
                                             checkpoint_list, [data], start, held or None)
                ws.store.register_world(new.name, new.root, new.fingerprint())
                st.session_state[state.NEXT_WORLD] = str(new.root)  # the sidebar's picker switches to it
                st.rerun()
            except InputError as e:
                st.error(inert(str(e)))

# ---- 3. score ------------------------------------------------------------------------------------------
st.subheader("3 · Score")
# the limit sits beside the Score button: it decides how much of the data an analysis covers
c1, c2 = st.columns([1, 3])
limit = c1.number_input("Trajectories to score (0 = all)", 0, 10_000_000, 200 if dev.device == "cuda" else 50, step=10,
                        key="ck_limit", help="the first N trajectories of the file; a GPU scores all of them quickly, "
                                             "two CPU cores about 1.5 min per 50 on the sample world")
c2.caption(score_scope(int(limit), total, Path(data).name if data else ""))
cfg = None
if not problems:
    try:
        cfg = AnalysisConfig(base=str(expand(base).resolve()), data=str(expand(data).resolve()),
                             checkpoints=checkpoints_value, graph=graph and str(expand(graph).resolve()),
                             base_names=base_names, limit=int(limit) or None, **settings)
    except ValueError as e:
        problems.append(f"Settings: {e}")
for p in problems:
    st.error(inert(p))
if cfg is not None:
    # the folder named once per request and kept across reruns: the command shown is the one the job runs
    names = st.session_state.setdefault(state.SCORE_OUTS, {})
    request = cfg.to_json()
    name = names.setdefault(request, f"{Path(data).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    options = ScoreOptions(out=str(ws.analyses_dir / name), workspace=str(ws.root))
    with st.expander("Command line (the same job from a shell)", icon=":material/terminal:"):
        st.code(registry.shell_command(*registry.command("score", cfg, options)), language="bash")  # as the job runs
    running = [j for j in jobs.list_jobs(ws.job_dirs, "score", world and world.root) if j.state() == "running"]
    if st.button("Score", type="primary", icon=":material/play_arrow:", key="ck_run", disabled=bool(running),
                 help="runs in the background; the result is cached, so the same request returns at once"):
        registry.launch(ws, "score", cfg, options, title=f"score {Path(data).name} under {len(infos) + 1} models",
                        meta={"out": options.out}, world=world and world.root)
        names.pop(request)  # the next request gets a folder of its own
        st.rerun()
    if running:
        st.caption("One scoring job at a time: wait for it or cancel it below.")


# ---- jobs ----------------------------------------------------------------------------------------------
def open_result(job, main, side) -> None:
    if side.button("Open", key=f"open-{job.id}", icon=":material/open_in_new:"):
        st.session_state[state.ANALYSIS] = job.meta.get("out")
        st.session_state[state.OPEN_EXPLORER] = True  # switch_page cannot run inside the panel's fragment
        st.rerun(scope="app")


if jobs.list_jobs(ws.job_dirs, "score", world and world.root):
    st.subheader("Scoring jobs")
    ui.jobs_panel(ws.job_dirs, "score", open_result, world=world and world.root)

# ---- analyses ------------------------------------------------------------------------------------------
found, others = ui.world_analyses(ws, world)  # this world's; another world's open with that world
if found or others:
    st.subheader("Analyses")
    if others:
        st.caption(f"{len(others)} analyses of other worlds are listed when their world is open (or in the explorer, "
                   "on request).")
    rows = pd.DataFrame([{"analysis": a.name, "data": Path(a.config.data).name, "trajectories": a.config.limit or "all",
                          "positions": a.config.positions, "written": time.strftime("%Y-%m-%d %H:%M", time.localtime(a.created)),
                          "path": str(a.path)} for a in found])
    event = st.dataframe(rows, hide_index=True, key="ck_analyses", on_select="rerun", selection_mode="single-row")
    if event.selection.rows:
        st.session_state[state.ANALYSIS] = rows.iloc[event.selection.rows[0]]["path"]
        st.switch_page(routes.explorer())
