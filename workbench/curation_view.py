"""Rendering for the curation page: the side-by-side pair (the word diff from ``workbench.diffview``) and one
function per panel. Logic stays in ``core.curation.queue`` and ``core.curation.snapshots``; these only lay out widgets."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd
import streamlit as st

from core.cpo.train import MIN_PAIRS
from core.curation import queue as curation
from core.curation import snapshots
from core.errors import InputError
from core.io.roots import check_data_path
from core.workspace.workspace import data_roots
from workbench import resources, state, ui
from workbench.diffview import diff_html
from workbench.safe_text import inert

QUEUE_ROWS = 1000  # rows of the queue table sent to the browser
KEYS = {"accept": "a", "reject": "x", "edit": "e", "skip": "s"}  # Streamlit reserves R (rerun) and C
DIFF_CSS = ("<style>.cf-pair{white-space:pre-wrap;font-family:var(--font,inherit);line-height:1.5;padding:.6rem;"
            "border:1px solid rgba(128,128,128,.35);border-radius:.5rem;min-height:4rem}"
            ".cf-pair mark.del{background:#f8c4c4;color:inherit}.cf-pair mark.ins{background:#bfe8c5;color:inherit}"
            "</style>")
# a study's image in a column narrower than ui.images' width, beside the text: scaled to the column, not spilling
IMAGE_CSS = ("<style>[data-testid='stColumn'] [data-testid^='stImage']{max-width:100%}"
             "[data-testid='stColumn'] [data-testid^='stImage'] img{max-width:100%;height:auto}</style>")


def counterfactual_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The stored-counterfactuals table as a reader wants it: ``created_at`` as local date-times (not epoch
    floats), ``model`` saying what wrote a row (graph rules have no model, not "None")."""
    out = table.drop(columns=[c for c in ("settings", "source") if c in table])
    if "created_at" in out:
        out["created_at"] = pd.to_datetime(out["created_at"], unit="s", utc=True).dt.tz_convert(None).dt.floor("s")
    if "images" in out:  # file names: which X-ray each row shows (an image swap's is another study's)
        out["images"] = [", ".join(Path(p).name for p in json.loads(v)) if isinstance(v, str) else ""
                         for v in out["images"]]
    if "model" in out:
        out["model"] = [m if isinstance(m, str) and m else ("graph rules" if meth == "graph" else "–")
                        for m, meth in zip(out["model"], out.get("method", [""] * len(out)), strict=True)]
    return out


def pair_html(item: curation.Item) -> str:
    """The focus view: prompt, then original and counterfactual side by side, changes highlighted."""
    left, right = diff_html(item.original, item.counterfactual)
    head = lambda title: f"<b>{html.escape(title)}</b>"  # noqa: E731
    return (DIFF_CSS + f"<div>{head('Prompt')}<div class='cf-pair'>{html.escape(item.prompt)}</div></div>"
            "<div style='display:flex;gap:1rem;margin-top:.6rem'>"
            f"<div style='flex:1'>{head('Original · ' + str(item.label))}<div class='cf-pair'>{left}</div></div>"
            f"<div style='flex:1'>{head('Counterfactual · ' + item.target)}<div class='cf-pair'>{right}</div></div>"
            "</div>")


def pair_view(item: curation.Item) -> None:
    """The pair with its study's image(s) beside it (``ui.images``): for an image swap, the original's and the
    counterfactual's images side by side above the (unchanged) text; nothing more for a text-only pair."""
    if item.swapped:
        st.html(IMAGE_CSS)
        left, right = st.columns(2)
        with left:
            ui.images(item.images, f"Original image · {item.label}")
        with right:
            ui.images(item.rejected_images, f"Counterfactual image · {item.target}")
        st.html(pair_html(item))
    elif item.images:
        text, pictures = st.columns([2, 1])
        text.html(IMAGE_CSS + pair_html(item))
        with pictures:
            ui.images(item.images, f"Study · {item.label}")
    else:
        st.html(pair_html(item))


def world_scope(store, world) -> str | None:
    """Whose items the page curates: the open world's (``World.key``), or, by the user's explicit choice (or with
    no world open), every world's (None). Items of no known world (stored before worlds, ``worldless``) are
    listed, and placed in the open world only when the user says so."""
    from core.counterfactuals.store import assign_world, worldless

    if world is None:
        st.caption("No world open: the items of every world.")
        return None
    every = st.toggle("Every world's items, not only this world's", key="cur_every_world",
                      help="Curation, exports and snapshots cover the open world's items unless this is on.")
    st.caption("Items of **every world** in the workspace." if every else f"Items of the world **{inert(world.name)}**.")
    lost = worldless(store)
    if not lost.empty:
        with st.expander(f"{int(lost['counterfactuals'].sum())} counterfactual pairs of no known world "
                         "(stored before worlds)", icon=":material/help:"):
            st.dataframe(lost, hide_index=True, key="cur_worldless")
            pick = st.multiselect("Sources to place in this world", lost["source"].tolist(), key="cur_assign_sources")
            if st.button("Place them in this world", key="cur_assign", disabled=not pick):
                moved, left = assign_world(store, world.key, pick)
                st.toast(f"{moved} trajectories placed in {world.name}"
                         + (f"; {left} already there, left as they were" if left else ""))
                st.rerun()
    return None if every else world.key


def filters(store, scope: str | None = None) -> curation.QueueFilter:
    """The queue filters (an expander) over the items of ``scope`` (a world's key; None: every world's); returns
    the filter they describe."""
    opts = curation.filter_options(store, scope)
    with st.expander("Queue filters", icon=":material/filter_list:"):
        c = st.columns(4)
        labels = c[0].multiselect("Label", opts["labels"], key="cur_f_labels")
        targets = c[1].multiselect("Target", opts["targets"], key="cur_f_targets")
        methods = c[2].multiselect("Method", opts["methods"], key="cur_f_methods")
        who = c[3].selectbox("Decided by", ["anyone", *opts["annotators"]], key="cur_f_annotator")
        lo, hi = st.slider("Consistency score", 0.0, 1.0, (0.0, 1.0), 0.05, key="cur_f_consistency",
                           help="Graph consistency of the counterfactual; pairs without a score show only "
                                "at the full range.")
    return curation.QueueFilter(tuple(labels), tuple(targets), tuple(methods), lo if lo > 0 else None,
                                hi if hi < 1 else None, None if who == "anyone" else who, world=scope)


def _store():
    return resources.workspace(st.session_state[state.WORKSPACE_PATH]).store


def _decide(item_id: int, decision: str) -> None:
    """Button callback: runs before the rerun, so the next item is claimed in the same run."""
    store = _store()
    text, note = st.session_state.get(state.cur_edit(item_id)), st.session_state.get(state.cur_note(item_id), "")
    try:
        curation.annotate(store, item_id, st.session_state[state.ANNOTATOR], decision,
                          text if decision == "edit" else None, note)
        st.session_state[state.CUR_LAST] = f"{decision} #{item_id}"
    except InputError as e:
        st.session_state[state.CUR_LAST_ERROR] = str(e)


def focus(store, annotator: str, flt: curation.QueueFilter, counts: tuple[int, int]) -> None:
    """Progress, the claimed item side by side, the edit box, the note and the decision buttons.
    ``counts`` is ``curation.progress(store, flt)``, read once per run for this view and the queue's."""
    done, total = counts
    st.progress(done / total if total else 0.0, text=f"Queue: {done} of {total} settled")
    if err := st.session_state.pop(state.CUR_LAST_ERROR, None):
        st.error(inert(err))
    item_id = curation.claim_next(store, annotator, flt)
    if item_id is None:
        st.info("Nothing left for you in this queue." if total else "The queue is empty: import pairs first.")
        return
    item = curation.item(store, item_id)
    score = "–" if item.consistency is None else f"{item.consistency:.2f}"
    st.caption(inert(f"Item #{item.id} · {item.label} → {item.target} · method {item.method} · source {item.source} · ")
               + f"consistency {score} · needs {item.required} decision(s)")
    pair_view(item)
    st.text_area("Edit the counterfactual in place, then Save edit", item.counterfactual, key=state.cur_edit(item_id))
    st.text_input("Note", key=state.cur_note(item_id), placeholder="why (optional)")
    cols = st.columns(4)
    for col, (decision, key) in zip(cols, KEYS.items(), strict=True):
        label = {"edit": "Save edit"}.get(decision, decision.capitalize())
        col.button(label, key=f"cur_{decision}", shortcut=key, on_click=_decide,
                   args=(item_id, decision), type="primary" if decision == "accept" else "secondary",
                   width="stretch")
    if last := st.session_state.get(state.CUR_LAST):
        st.caption(f"Last: {inert(last)}")


def guidelines_panel(store, annotator: str) -> None:
    st.markdown("**Guidelines**")
    text = curation.guidelines(store)
    st.markdown(inert(text))  # markdown, but no image or link: every annotator's browser renders it
    with st.expander("Edit guidelines"):
        new = st.text_area("Markdown", text, key="cur_guidelines", height=220)
        if st.button("Save guidelines", key="cur_save_guidelines") and new != text:
            curation.save_guidelines(store, new, annotator)
            st.rerun()


def queue_panel(store, flt: curation.QueueFilter, counts: tuple[int, int]) -> None:
    status = st.segmented_control("Status", curation.STATUSES, default="all", key="cur_status") or "all"
    df = curation.queue(store, curation.QueueFilter(**{**flt.__dict__, "status": status}), limit=QUEUE_ROWS)
    settled, total = counts
    st.caption(f"{total} items match the filters, {settled} settled" +
               (f"; the first {QUEUE_ROWS} are listed" if len(df) == QUEUE_ROWS else ""))
    st.dataframe(df, hide_index=True, key="cur_queue")
    c = st.columns([1, 3])
    k = c[0].number_input("Decisions needed per item (k)", 1, 10, 1, key=state.CUR_K)
    c[1].button(f"Set k = {k} on the {total} filtered items", key="cur_set_k", on_click=_set_k, args=(flt,))


def _set_k(flt: curation.QueueFilter) -> None:
    """Button callback: runs before the rerun, so the focus view above already shows the new k."""
    k = int(st.session_state[state.CUR_K])
    changed = curation.set_required(_store(), k, flt)
    st.toast(f"k = {k} on {changed} items")


def conflicts_panel(store, annotator: str, scope: str | None = None) -> None:
    df = curation.conflicts(store, scope)
    if df.empty:
        st.info("No conflicts: every item with several decisions is unanimous or settled.")
        return
    item_id = st.selectbox("Item", sorted(df["id"].unique()), key="cur_conflict_item")
    rows = df[df["id"] == item_id]
    pair_view(curation.item(store, int(item_id)))
    st.dataframe(rows.drop(columns=["id"]), hide_index=True)
    options = ["accept", "reject"] + [f"edit by {r.annotator}" for r in rows.itertuples() if r.decision == "edit"]
    choice = st.radio("Settle as", options, horizontal=True, key="cur_settle_choice")
    note = st.text_input("Why", key="cur_settle_note")
    if st.button("Settle", key="cur_settle", type="primary"):
        text = None
        if choice.startswith("edit by "):
            text = rows[rows["annotator"] == choice.removeprefix("edit by ")]["edited_text"].iloc[0]
        curation.resolve(store, int(item_id), "edit" if text else choice, annotator, text, note)
        st.rerun()


def agreement_panel(store, scope: str | None) -> None:
    """Agreement among the annotators of ``scope``'s items (the open world's key; None: every world's, as the
    page's toggle says)."""
    ag = curation.agreement(store, scope)
    st.caption("Annotators and items of " + ("every world." if scope is None else "this world only (the toggle "
                                                                                   "above covers every world's)."))
    fmt = lambda v: "n/a" if pd.isna(v) else f"{v:.3f}"  # noqa: E731
    c = st.columns(3)
    c[0].metric("Fleiss' kappa", fmt(ag.fleiss), help="Fleiss (1971) over items with two or more ratings")
    c[1].metric("Light's kappa", fmt(ag.light), help="Mean of the pairwise Cohen's kappas (scikit-learn)")
    c[2].metric("Items rated twice or more", ag.items)
    st.dataframe(ag.pairs, hide_index=True, key="cur_agreement")


EXAMPLE_NOTES = {"ccf_example.json": "CCF JSON (report, diagnose, counterfact)",
                 "trl_pairs.jsonl": "TRL preference JSONL (prompt, chosen, rejected)",
                 "swift_pairs.json": "ms-swift JSON (messages, rejected_messages)"}


def examples_panel(store, folder: Path | None, world: str = "") -> None:
    """The world's example files (``examples/``), one click to import: something to try on a fresh workspace."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".jsonl")) if folder and folder.is_dir() else []
    if not files:
        return
    c = st.columns([3, 1])
    pick = c[0].selectbox("Try an example file of the world", files, key="cur_example",
                          format_func=lambda p: f"{p.name} · {EXAMPLE_NOTES.get(p.name, p.suffix)}")
    if c[1].button("Import the example", key="cur_import_example"):
        try:
            r = snapshots.import_file(store, pick, world=world)
            st.session_state[state.CUR_IMPORTED] = (f"Imported {pick.name} ({r.format}): kept {r.kept} pairs, "
                                                f"{r.duplicates} duplicates, skipped {r.skipped} invalid records.")
            st.rerun()
        except InputError as e:
            st.error(inert(str(e)))


def import_panel(store, examples: Path | None = None, world=None) -> None:
    """Import pairs into the open ``world`` (its items from now on; with none open, of no world)."""
    examples_panel(store, examples, world.key if world else "")
    upload = st.file_uploader("Upload CCF JSON, TRL JSONL or ms-swift JSON (images by absolute path)",
                              type=["json", "jsonl"], key="cur_upload")
    path = st.text_input("…or a path on this machine (a file, or a Hugging Face datasets folder); relative "
                         "images are found beside the file", key="cur_import_path")  # under the data roots only
    image_folder = st.text_input("Image folder for CCF items (optional): each item's dicom_id names its image, "
                                 "also nested as mimic-cxr-00N/images/", key="cur_import_images")
    c = st.columns(3)
    fmt = c[0].selectbox("Format", ["auto", "ccf", "trl", "swift"], key="cur_import_format")
    k = c[1].number_input("Decisions needed per item (k)", 1, 10, 1, key="cur_import_k")
    keep = c[2].checkbox("Keep the valid part if some records are invalid", key="cur_keep_valid")
    if done := st.session_state.pop(state.CUR_IMPORTED, None):
        st.success(inert(done))
    if st.button("Import", key="cur_import", type="primary"):
        bar = st.progress(0.0, text="Importing…")
        try:
            if not (upload or path.strip()):
                raise InputError("choose a file to upload or enter its path first")
            roots = data_roots(store, world and world.root)
            folder = check_data_path(image_folder.strip(), roots) if image_folder.strip() else None
            options = dict(fmt=None if fmt == "auto" else fmt, keep_valid=keep, required=int(k), image_folder=folder,
                           image_roots=roots,  # a file's image paths are typed paths too: only under the roots
                           world=world.key if world else "",
                           progress=lambda d, n: bar.progress(d / n, text=f"Importing {d}/{n}"))
            if upload:
                name = upload.name
                r = snapshots.import_text(store, upload.getvalue().decode("utf-8"), name, **options)
            else:
                name = Path(path.strip()).name
                r = snapshots.import_file(store, check_data_path(path.strip(), roots), **options)
            st.session_state[state.CUR_IMPORTED] = (f"Imported {name} ({r.format}): kept {r.kept} pairs, {r.duplicates} "
                                                f"duplicates, skipped {r.skipped} invalid records.")
            st.rerun()  # the queue and the filters show the new pairs
        except UnicodeDecodeError as e:
            st.error(inert(f"{upload.name}: not UTF-8 text ({e.reason} at byte {e.start}); nothing was stored."))
        except InputError as e:
            st.error(inert(str(e)))
    batches = snapshots.import_batches(store, world.key if world else None)
    if batches:
        st.dataframe(pd.DataFrame(batches), hide_index=True, key="cur_batches")


def export_panel(store, root: Path, scope: str | None = None) -> None:
    """Export the curated pairs of ``scope`` (the open world's key; None: every world's, as the page says)."""
    c = st.columns(4)
    fmt = c[0].selectbox("Format", ["trl", "swift", "hf", "ccf"], key="cur_export_format",
                         format_func={"trl": "TRL preference JSONL", "swift": "ms-swift JSON",
                                      "hf": "Hugging Face datasets folder", "ccf": "CCF JSON"}.get)
    test = c[1].number_input("Test fraction", 0.0, 0.9, 0.0, 0.05, key="cur_export_test")
    seed = c[2].number_input("Split seed", 0, 2**31 - 1, 0, key="cur_export_seed")
    name = c[3].text_input("Snapshot name (optional)", key="cur_export_name")
    c = st.columns(4)
    conv = c[0].checkbox("Conversational (TRL)", key="cur_export_conv")
    pending = c[1].checkbox("Include undecided pairs", key="cur_export_pending")
    copy = c[2].checkbox("Copy images", key="cur_export_copy_images",
                         help="Copy the studies' images into the snapshot (images/, named by content; the Hugging "
                              "Face folder embeds them). Otherwise the snapshot names them by absolute path. "
                              "Either way images.json records each image's content hash.")
    system = c[3].text_input("System prompt (optional)", key="cur_export_system")
    sources = curation.filter_options(store, scope)["sources"]
    weights = st.data_editor(pd.DataFrame({"source": sources, "weight": 1.0}), hide_index=True,
                             disabled=["source"], key="cur_export_weights")
    if st.button("Export", key="cur_export", type="primary"):
        try:
            cfg = snapshots.ExportConfig(fmt, float(test), int(seed), conv, system or None,
                                         dict(zip(weights["source"], weights["weight"].astype(float), strict=True)), pending,
                                         name.strip() or None, copy)
            snap = snapshots.export_snapshot(store, root, cfg, scope)
            rows = ", ".join(f"{n} {split}" for split, n in snap.split["rows"].items())
            use = (f"The CPO runs page of this world offers it as `{snap.name}`." if snapshots.trainable(snap) else
                   f"A CPO run trains on TRL snapshots only: this {fmt} export is for other trainers (ms-swift, "
                   "your own); export TRL to train here.")
            st.success(f"Snapshot **{snap.name}**: {snap.row_count} pairs ({rows}) in `{snap.path}` "
                       f"(sha256 {snap.content_hash[:12]}…). {use}")
            if snap.row_count < MIN_PAIRS:
                st.warning(f"Only {snap.row_count} pairs: a CPO run wants at least {MIN_PAIRS} (the sample world's "
                           "default set has 480); with fewer it can leave the model worse than it started. "
                           "Fine for trying the loop; curate more pairs for a real repair.")
        except (InputError, ValueError) as e:
            st.error(inert(str(e)))
    snaps = snapshots.snapshots(store, scope)
    if snaps and st.button("Check the snapshots' images", key="cur_check_images",
                           help="Hash every image a snapshot names again and compare with its images.json: a run "
                                "on a snapshot whose images changed trains on other images than were curated."):
        _check_images(snaps)
    if snaps:
        st.dataframe(pd.DataFrame([{"name": s.name, "format": s.format, "rows": s.row_count,
                                    "split": str(s.split["rows"]), "path": str(s.path), "sha256": s.content_hash[:12]}
                                   for s in snaps]),
                     hide_index=True, key="cur_snapshots")


def _check_images(snaps: list) -> None:
    problems = [(s.name, p) for s in snaps for p in s.image_changes()]
    for name, problem in problems[:20]:
        st.warning(inert(f"Snapshot {name}: {problem}"))
    if len(problems) > 20:
        st.warning(f"… and {len(problems) - 20} more.")
    if not problems:
        st.success("Every snapshot's images are as they were exported.")
