"""Counterfactuals of a vision-language trajectory (issue 16): a graph rewrite keeps the study's image; an image
swap (CPO++'s visual counterfactual) keeps the CoT and shows another study's image of the target label, stored
with its method, target and the swapped image, and exported as a pair of source ``image_swap``."""

import json

import pytest

from core.counterfactuals import batch as cf_job
from core.counterfactuals.rewrite import (
    image_swaps,
    make_counterfactuals,
    swap_donors,
    with_images,
)
from core.counterfactuals.store import generate_batch, store_counterfactuals
from core.curation import queue as curation
from core.curation import snapshots
from core.errors import InputError
from core.graph.store import GraphStore
from core.io.trajectories import read_trajectories
from core.workspace.workspace import Workspace
from core.workspace.world import load_world
from tests.vl_world import make_vl_world


@pytest.fixture(scope="module")
def vl_world(tmp_path_factory):
    return load_world(make_vl_world(tmp_path_factory.mktemp("vl")))


@pytest.fixture(scope="module")
def records(vl_world):
    data = vl_world.dataset_path("test")
    return with_images(read_trajectories(data), data)


def graph_of(ws, world):
    gs = GraphStore.open(ws.store, world.graph_path)
    return gs.graph(gs.head()), gs.head()


def test_records_carry_absolute_images_of_the_data_file(records, vl_world):
    assert len(records) == 8 and all(len(r["images"]) == 1 for r in records)
    assert all(r["images"][0].startswith(str(vl_world.dataset_path("test").parent.parent)) for r in records)
    assert with_images([{"id": "t", "prompt": "p", "completion": "c"}], "/x/d.jsonl")[0]["images"] == []
    with pytest.raises(InputError, match="trajectory bad: .*expected a list of image paths"):
        with_images([{"id": "bad", "images": 3}], "/x/d.jsonl")


def test_a_graph_rewrite_keeps_the_image_and_an_image_swap_keeps_the_text(tmp_path, vl_world, records):
    ws = Workspace.open(tmp_path / "ws")
    graph, version = graph_of(ws, vl_world)
    rec = records[0]  # Pneumonia, dicom-000
    [text] = make_counterfactuals(graph, rec, ["Edema"], "graph", version)
    assert text.images == tuple(rec["images"]) and text.completion != rec["completion"]
    swaps = make_counterfactuals(graph, rec, ["Edema", "Cardiomegaly", "Atelectasis"], "image_swap", version,
                                 donors=records)
    assert [s.target for s in swaps] == ["Edema", "Cardiomegaly"]  # no Atelectasis study to take an image from
    for s in swaps:
        donor = next(r for r in records if r["id"] == s.settings["donor"])
        assert (donor["label"], list(s.images), s.completion) == (s.target, donor["images"], rec["completion"])
        assert s.method == "image_swap" and s.consistency is None and s.images != tuple(rec["images"])
    ids = store_counterfactuals(ws.store, rec, "w:test", [text, *swaps])
    items = [curation.item(ws.store, i) for i in ids]
    assert items[0].images == items[0].rejected_images == rec["images"] and not items[0].swapped
    assert all(i.swapped and i.rejected_images == list(s.images) and i.target == s.target and i.method == "image_swap"
               for i, s in zip(items[1:], swaps, strict=True))
    settings = json.loads(ws.store.query("SELECT settings FROM counterfactuals WHERE id = ?", (ids[1],))[0][0])
    assert settings["original_images"] == rec["images"] and settings["donor"] == swaps[0].settings["donor"]
    assert store_counterfactuals(ws.store, rec, "w:test", swaps) == ids[1:]  # stored once
    with pytest.raises(InputError, match="needs a trajectory with images"):
        image_swaps({**rec, "images": []}, records, ["Edema"])


def test_donors_are_spread_over_the_studies_of_a_label(records):
    edema = swap_donors(records, "Edema")
    assert len(edema) == 2
    picked = {image_swaps(r, records, ["Edema"])[0].settings["donor"] for r in records if r["label"] != "Edema"}
    assert picked == {d["id"] for d in edema}  # a seeded pick per study, not always the first


def test_the_batch_job_makes_image_swaps_exported_as_visual_pairs_with_their_weight(tmp_path, vl_world):
    ws = Workspace.open(tmp_path / "ws")
    cfg = cf_job.BatchConfig(workspace=str(ws.root), world=str(vl_world.root), dataset="test", n=4, mode="all",
                             method="image_swap")
    last = cf_job.run(cfg)
    assert (last.done, last.stored) == (4, 12)  # each of 4 studies: one swap per other label (3)
    rows = curation.curated_rows(ws.store, include_pending=True)
    assert {r["source"] for r in rows} == {"image_swap"} and all(r["chosen"] == r["rejected"] for r in rows)
    snap = snapshots.export_snapshot(ws.store, ws.datasets_dir, snapshots.ExportConfig(
        "trl", include_pending=True, weights={"image_swap": 2.0}))
    recs = [json.loads(x) for x in (snap.path / "train.jsonl").read_text().splitlines()]
    assert all(r["source"] == "image_swap" and r["weight"] == 1.0 and len(r["rejected_images"]) == 1 for r in recs)


def test_a_text_world_batch_is_unchanged(tmp_path, sample_world):
    ws = Workspace.open(tmp_path / "ws")
    world = load_world(sample_world)
    graph, version = graph_of(ws, world)
    data = world.dataset_path(world.manifest.get("default_dataset", "test"))
    recs = with_images(read_trajectories(data, 3), data)
    assert all(r["images"] == [] for r in recs)
    *_, last = generate_batch(ws.store, graph, recs, "s", "confusable", graph_version=version)
    assert last.stored > 0
    assert ws.store.query("SELECT DISTINCT images, image_hashes FROM counterfactuals") == [("[]", "[]")]
    none = list(generate_batch(ws.store, graph, recs, "s", "all", method="image_swap"))
    assert none[-1].stored == 0  # text trajectories have no image to swap
