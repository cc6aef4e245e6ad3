"""Images through every format, the store and the snapshots (issue 16, "Formats keep images"): ms-swift
``images`` / ``rejected_images``, TRL's vision preference format, a Hugging Face folder with ``Image`` features,
CCF items with an image folder; snapshots that copy or reference the files and notice a changed image; the
workspace migration that adds images to a database made before them; bad image input named."""

import json
import shutil
from pathlib import Path

import pytest

from core.counterfactuals.rewrite import Counterfactual, image_swaps
from core.counterfactuals.store import store_counterfactuals
from core.curation import queue as curation
from core.curation import snapshots
from core.curation.snapshots import ExportConfig
from core.errors import InputError
from core.io import formats
from core.io import store as store_module
from core.io.store import Store
from tests.vl_world import COTS, LABELS, QUESTION, write_images

FORMATS = [ExportConfig("trl"), ExportConfig("trl", conversational=True), ExportConfig("swift"), ExportConfig("ccf"),
           ExportConfig("hf")]
IDS = ["trl", "trl-conversational", "swift", "ccf", "hf"]


def completion(label: str, cot: str | None = None) -> str:
    return f"<think> {cot or COTS[label]} </think> The disease of this patient is {label}."


def studies(images) -> list[dict]:
    """Four studies, one image each; two share their report text (only the image tells them apart)."""
    return [{"id": f"s{i}", "prompt": QUESTION, "completion": completion(LABELS[i % 2]), "label": LABELS[i % 2],
             "images": [str(images[i])]} for i in range(4)]


def fill(db: Store, images) -> None:
    """A text counterfactual (same image) and an image swap (same text, another study's image) per study."""
    recs = studies(images)
    for rec in recs:
        other = LABELS[1 - LABELS.index(rec["label"])]
        text = Counterfactual(other, completion(other), "graph", 1, None, {}, None, tuple(rec["images"]))
        store_counterfactuals(db, rec, "w:test", [text, *image_swaps(rec, recs, [other])])


def new_store(folder):
    folder.mkdir(parents=True)
    return Store.open(folder / "workbench.db")


def accept_all(db) -> None:
    for item_id in curation.queue(db)["id"]:
        curation.annotate(db, int(item_id), "ada", "accept")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("MIMIC-CXR"), 4)


@pytest.fixture
def db(tmp_path, images):
    s = new_store(tmp_path / "ws")
    fill(s, images)
    accept_all(s)
    yield s
    s.close()


def test_the_store_keeps_images_and_tells_studies_with_the_same_text_apart(db, images):
    rows = db.query("SELECT images, image_hashes FROM trajectories ORDER BY id")
    assert [json.loads(p) for p, _ in rows] == [[str(images[i])] for i in range(4)]  # s0 and s2: same text
    assert all(len(json.loads(h)) == 1 and len(json.loads(h)[0]) == 16 for _, h in rows)
    items = [curation.item(db, int(i)) for i in curation.queue(db)["id"]]
    text, swaps = [i for i in items if i.method == "graph"], [i for i in items if i.method == "image_swap"]
    assert len(text) == len(swaps) == 4
    assert all(i.rejected_images == i.images and not i.swapped for i in text)
    assert all(i.swapped and i.counterfactual == i.original for i in swaps)
    rows = curation.curated_rows(db)
    assert {r["source"] for r in rows} == {"w:test", "image_swap"}
    assert "image_swap" in curation.filter_options(db)["sources"]  # its own weight on the Export tab
    swap = next(r for r in rows if r["source"] == "image_swap")
    donor = next(s for s in studies(images) if s["images"] == swap["rejected_images"])
    assert donor["label"] == swap["target"] != swap["label"]
    scored = curation.trajectories_file(db, db.path.parent)  # what the drift engine scores: with the images
    assert [json.loads(x)["images"] for x in scored.read_text().splitlines()] == [[str(images[i])] for i in range(4)]


@pytest.mark.parametrize("copy", [False, True], ids=["reference", "copy"])
@pytest.mark.parametrize("config", FORMATS, ids=IDS)
def test_every_format_round_trips_its_images(tmp_path, db, config, copy):
    config = ExportConfig(**{**config.__dict__, "copy_images": copy, "weights": {"image_swap": 2.0}})
    a = snapshots.export_snapshot(db, tmp_path / "out1", config)
    manifest = json.loads((a.path / "images.json").read_text())["images"]
    assert len(manifest) == 4 and all(len(e["content_hash"]) == 16 for e in manifest)
    if copy and config.format != "hf":
        assert sorted(p.name for p in (a.path / "images").iterdir()) == sorted(e["path"][7:] for e in manifest)
    second = new_store(tmp_path / "ws2")
    data = a.path if config.format == "hf" else a.path / ("train.jsonl" if config.format == "trl" else "train.json")
    snapshots.import_file(second, data)
    accept_all(second)
    got = curation.curated_rows(second)
    assert len(got) == 8 and sum(r["source"] == "image_swap" for r in got) == 4
    assert all(len(r["images"]) == 1 and len(r["rejected_images"]) == 1 for r in got)
    b = snapshots.export_snapshot(second, tmp_path / "out2", config)
    assert a.row_count == b.row_count == 8
    if config.format == "swift":  # the authors' records name no target: an image swap's is not in the file, so
        records = lambda snap: sorted(json.dumps(r) for r in json.loads((snap.path / "train.json").read_text()))  # noqa: E731
        assert records(a) == records(b)  # the re-import orders it elsewhere (rows are ordered by content hash)
    else:
        assert a.content_hash == b.content_hash  # the same bytes: copies are named by content
    if not copy:  # the user's files are named, not copied
        assert {p for r in got for p in r["images"]} <= {str(p) for p in db_images(db)}
    second.close()


def db_images(db):
    return [p for (row,) in db.query("SELECT images FROM trajectories") for p in json.loads(row)]


def test_exported_records_are_the_contract_pair_format(tmp_path, db):
    snap = snapshots.export_snapshot(db, tmp_path / "out", ExportConfig("trl", weights={"image_swap": 3.0}))
    recs = [json.loads(x) for x in (snap.path / "train.jsonl").read_text().splitlines()]
    swaps = [r for r in recs if r["source"] == "image_swap"]
    text = [r for r in recs if r["source"] != "image_swap"]
    assert len(swaps) == len(text) == 4
    assert all(r["chosen"] == r["rejected"] and r["rejected_images"] != r["images"] for r in swaps)
    assert all("rejected_images" not in r and r["images"] for r in text)
    assert {r["weight"] for r in swaps} == {1.5} and {r["weight"] for r in text} == {0.5}  # 3 : 1, mean one
    conv = snapshots.export_snapshot(db, tmp_path / "out", ExportConfig("trl", conversational=True))
    rec = json.loads((conv.path / "train.jsonl").read_text().splitlines()[0])
    assert rec["prompt"] == [{"role": "user", "content": formats.typed_prompt(QUESTION, 1)}]
    assert [c["type"] for c in rec["prompt"][0]["content"]] == ["text", "image", "text"]
    from PIL import Image
    from trl.data_utils import (
        prepare_multimodal_messages,  # what TRL's trainers do with a vision record
    )

    filled = prepare_multimodal_messages(rec["prompt"] + rec["chosen"], [Image.open(rec["images"][0])])
    assert [b["type"] for b in filled[0]["content"]] == ["text", "image", "text"] and "image" in filled[0]["content"][1]
    assert filled[1]["content"] == [{"type": "text", "text": rec["chosen"][0]["content"]}]


def test_hf_folder_has_image_features_that_datasets_decodes(tmp_path, db, images):
    datasets = pytest.importorskip("datasets")
    for copy in (False, True):
        snap = snapshots.export_snapshot(db, tmp_path / "ds", ExportConfig("hf", copy_images=copy,
                                                                           name=f"hf-{copy}"))
        dd = datasets.load_from_disk(str(snap.path))
        assert isinstance(dd["train"].features["images"], datasets.List)
        assert isinstance(dd["train"].features["images"].feature, datasets.Image)
        row = dd["train"][0]
        assert row["images"][0].size == row["images"][0].convert("RGB").size and len(row["rejected_images"]) == 1
    # a folder written by datasets itself (save_to_disk embeds the bytes) imports with its images
    ds = datasets.Dataset.from_dict(
        {"prompt": [QUESTION], "chosen": [completion("Edema")], "rejected": [completion("Edema")],
         "images": [[str(images[0])]], "rejected_images": [[str(images[1])]]},
        features=datasets.Features({k: datasets.Value("string") for k in ("prompt", "chosen", "rejected")}
                                   | {k: datasets.List(datasets.Image()) for k in ("images", "rejected_images")}))
    ds.save_to_disk(str(tmp_path / "theirs"))
    store = new_store(tmp_path / "ws3")
    r = snapshots.import_file(store, tmp_path / "theirs")
    assert (r.format, r.kept) == ("hf", 1)
    item = curation.item(store, 1)
    kept = snapshots.image_store(store)
    assert item.swapped and all(p.startswith(str(kept)) for p in item.images + item.rejected_images)
    assert (kept / item.images[0].rsplit("/", 1)[1]).read_bytes() == images[0].read_bytes()


def test_authors_swift_records_keep_the_rejected_sides_own_images(tmp_path, images):
    data = tmp_path / "data"
    data.mkdir()
    rel = [str(shutil.copy(images[i], data / f"x{i}.jpg")).rsplit("/", 1)[1] for i in range(2)]
    turns = [{"role": "user", "content": QUESTION}]
    recs = [{"messages": turns + [{"role": "assistant", "content": completion("Edema")}], "images": [rel[0]],
             "rejected_messages": turns + [{"role": "assistant", "content": completion("Edema")}],
             "rejected_images": [rel[1]]},
            {"messages": turns + [{"role": "assistant", "content": completion("Edema")}], "images": [rel[1]],
             "rejected_messages": turns + [{"role": "assistant", "content": completion("Pneumonia")}]}]
    (data / "pairs.json").write_text(json.dumps(recs))
    store = new_store(tmp_path / "ws")
    snapshots.import_file(store, data / "pairs.json")
    second, first = sorted((curation.item(store, i) for i in (1, 2)), key=lambda i: i.swapped)  # text pairs go in first
    assert first.images == [str(data / "x0.jpg")] and first.rejected_images == [str(data / "x1.jpg")]
    assert second.images == second.rejected_images == [str(data / "x1.jpg")]
    accept_all(store)
    # imported with rejected_images and no "source": a visual pair all the same, whose weight the editor offers
    assert curation.filter_options(store)["sources"] == sorted({"image_swap", "pairs.json"})
    assert {r["source"] for r in curation.curated_rows(store)} == {"image_swap", "pairs.json"}
    snap = snapshots.export_snapshot(store, tmp_path / "out", ExportConfig("swift", copy_images=True))
    out = json.loads((snap.path / "train.json").read_text())
    visual = next(r for r in out if "rejected_images" in r)
    assert visual["images"] != visual["rejected_images"]
    assert all((snap.path / p).is_file() for r in out for p in r["images"] + r.get("rejected_images", []))


def test_trl_vision_format_and_ccf_with_an_image_folder_import(tmp_path, images):
    rec = {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Disease?"}]}],
           "chosen": [{"role": "assistant", "content": [{"type": "text", "text": completion("Edema")}]}],
           "rejected": [{"role": "assistant", "content": completion("Pneumonia")}], "images": [str(images[0])]}
    parsed = formats.parse(json.dumps(rec), "v.jsonl")
    assert not parsed.errors
    assert (parsed.pairs[0].prompt, parsed.pairs[0].images) == ("<image>Disease?", (str(images[0]),))
    folder = images[0].parents[2]  # MIMIC-CXR/mimic-cxr-00N/images/<dicom_id>.jpg
    items = [{"dicom_id": images[i].stem, "report": COTS["Edema"], "diagnose": "Edema",
              "counterfact": {"Pneumonia": COTS["Pneumonia"]}} for i in range(2)]
    parsed = formats.parse(json.dumps(items), "ccf.json", image_folder=folder)
    assert [p.images for p in parsed.pairs] == [(str(images[0]),), (str(images[1]),)]
    bad = formats.parse(json.dumps([{**items[0], "dicom_id": "nope"}]), "ccf.json", image_folder=folder)
    assert bad.errors == ["ccf.json, item 0, field 'dicom_id': no image named 'nope' in the image folder"]


def test_bad_image_input_names_the_record_and_the_path(tmp_path, images):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    good = {"prompt": QUESTION, "chosen": completion("Edema"), "rejected": completion("Pneumonia")}
    lines = [good | {"images": [str(images[0])]}, good | {"images": ["missing.jpg"]},
             good | {"images": ["broken.jpg"]}, good | {"images": [str(images[0]), str(images[1])]},
             good | {"images": 3}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    errors = formats.parse(path.read_text(), "pairs.jsonl", data_file=path).errors
    assert errors[0] == f"pairs.jsonl, line 2, field 'images[0]': image not found: {tmp_path / 'missing.jpg'}"
    assert errors[1].startswith(f"pairs.jsonl, line 3, field 'images[0]': cannot read image {tmp_path / 'broken.jpg'}")
    assert errors[2] == ("pairs.jsonl, line 4, field 'images': 1 image placeholder(s) in the prompt but 2 image(s); "
                         "expected one image per placeholder")
    assert errors[3] == "pairs.jsonl, line 5, field 'images': expected a list of image paths (strings), got int"
    upload = formats.parse(json.dumps(good | {"images": ["x.jpg"]}), "up.jsonl")  # no path: relative is ambiguous
    assert "field 'images[0]': relative image path 'x.jpg' in an upload" in upload.errors[0]
    outside = formats.parse(path.read_text(), "pairs.jsonl", data_file=path, image_roots=[tmp_path / "elsewhere"])
    refusal = ": not under the data roots, so the workbench does not open it."  # the same for a missing file
    assert outside.errors[0].startswith(f"pairs.jsonl, line 1, field 'images[0]': {images[0]}{refusal}")
    assert outside.errors[1].startswith(f"pairs.jsonl, line 2, field 'images[0]': {tmp_path / 'missing.jpg'}{refusal}")
    store = new_store(tmp_path / "ws")
    with pytest.raises(InputError, match="4 of 5 trl records are invalid"):
        snapshots.import_file(store, path)
    assert store.query("SELECT COUNT(*) FROM trajectories") == [(0,)]


def test_a_reloaded_snapshot_whose_image_changed_is_reported(tmp_path, images):
    own = [shutil.copy(p, tmp_path / p.name) for p in images]
    db = new_store(tmp_path / "ws")
    fill(db, [tmp_path / p.name for p in images])
    accept_all(db)
    ref = snapshots.export_snapshot(db, tmp_path / "ds", ExportConfig("trl"))
    copied = snapshots.export_snapshot(db, tmp_path / "ds", ExportConfig("trl", copy_images=True))
    assert snapshots.snapshot(db, ref.name).image_changes() == [] == copied.image_changes()
    changed = own[1]
    shutil.copyfile(images[2], changed)  # the user replaces a file under the same name
    problems = snapshots.snapshot(db, ref.name).image_changes()
    assert len(problems) == 1 and problems[0].startswith(f"{changed}: image changed since the snapshot")
    assert copied.image_changes() == []  # its own copies did not change
    (ref.path / "images.json").read_text()  # the manifest is still there, untouched
    changed.unlink()
    assert "image missing" in snapshots.snapshot(db, ref.name).image_changes()[0]


def test_a_database_made_before_images_migrates_and_reads_as_text_only(tmp_path, monkeypatch):
    from tests.curation_data import write_ccf

    path = tmp_path / "old.db"
    with monkeypatch.context() as m:  # the workbench as it was: schema 6, no image columns
        m.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:6])
        m.setattr(store_module, "SCHEMA_VERSION", 6)
        old = Store.open(path)
        old.con.execute("BEGIN")
        old.con.execute("INSERT INTO trajectories (content_hash, source, prompt, completion, label, created_at) "
                        "VALUES ('h', 's', 'p', ?, 'Edema', 0)", (completion("Edema"),))
        old.con.execute("INSERT INTO counterfactuals (trajectory_id, content_hash, target, completion, method, "
                        "created_at) VALUES (1, 'c', 'Pneumonia', ?, 'graph', 0)", (completion("Pneumonia"),))
        old.con.execute("COMMIT")
        assert "images" not in {r[1] for r in old.con.execute("PRAGMA table_info(trajectories)")}
        old.close()
    db = Store.open(path)
    assert db.schema_version == store_module.SCHEMA_VERSION
    item = curation.item(db, 1)
    assert (item.images, item.rejected_images, item.swapped, item.original) == ([], [], False, completion("Edema"))
    curation.annotate(db, 1, "ada", "accept")
    snapshots.import_file(db, write_ccf(tmp_path / "ccf.json", n=2))  # new rows beside the old ones
    accept_all(db)
    snap = snapshots.export_snapshot(db, tmp_path / "ds", ExportConfig("trl"))
    recs = [json.loads(x) for x in (snap.path / "train.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and not any("images" in r for r in recs) and not (snap.path / "images.json").exists()


OLD_DB = Path(__file__).resolve().parents[2] / "data" / "workbench-schema6.db"  # made by the workbench before images


def test_a_workspace_made_by_the_previous_workbench_loses_nothing(tmp_path):
    """``tests/data/workbench-schema6.db`` was written by the code of commit 59240cd (schema 6): the sample
    world's example imports (k = 2), graph counterfactuals, two annotators' decisions, a resolution, guidelines,
    a registered world and a TRL snapshot."""
    import sqlite3

    path = tmp_path / "workbench.db"
    shutil.copyfile(OLD_DB, path)
    con = sqlite3.connect(path)
    tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    before = {t: con.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in tables}
    assert con.execute("PRAGMA user_version").fetchone() == (6,) and len(before["annotations"]) == 12
    con.close()
    db = Store.open(path)
    assert db.schema_version == store_module.SCHEMA_VERSION
    later = (*store_module.IMAGE_COLUMNS, "world", "meta")  # columns of later migrations (7, 8)
    for t in tables:
        columns = [r[1] for r in db.query(f"PRAGMA table_info({t})") if r[1] not in later]
        assert db.query(f"SELECT {', '.join(columns)} FROM {t} ORDER BY rowid") == before[t], t
    assert set(db.query("SELECT images, image_hashes FROM trajectories UNION "
                        "SELECT images, image_hashes FROM counterfactuals")) == {("[]", "[]")}
    old = snapshots.snapshots(db)[0]
    again = snapshots.export_snapshot(db, tmp_path / "datasets", ExportConfig("trl"))
    assert (again.name, again.content_hash, again.id) == (old.name, old.content_hash, old.id)  # the same export
    assert not (again.path / "images.json").exists() and again.image_changes() == []
    items = [curation.item(db, int(i)) for i in curation.queue(db)["id"]]
    assert items and all(i.images == i.rejected_images == [] and not i.swapped for i in items)
