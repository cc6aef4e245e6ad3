"""Visual drift (core.perturb.visual) on a user's tiny VL run: image swap keeps the text and changes the image,
occlusion greys one patch only, the batched beliefs equal naive re-encoding, flip rates add up, jobs cancel."""

import dataclasses
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from core.drift.probe import ProbeConfig, probe_positions, sentence_ids, tokens_of
from core.errors import InputError
from core.io.images import load_image
from core.jobs import registry
from core.jobs import supervisor as jobs
from core.models.families.qwen_vl.forward import naive_label_logprobs
from core.models.families.qwen_vl.inputs import IMAGE_PAD, encode_vl
from core.perturb import visual, visual_probe
from core.perturb.job import VisualOptions
from core.progress import Cancelled
from core.workspace.world import load_world
from tests.vl_world import LABELS, make_vl_world

LABELS_SORTED = sorted(LABELS)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return load_world(make_vl_world(tmp_path_factory.mktemp("vl-visual")))


@pytest.fixture(scope="module")
def cfg(world):
    return visual.VisualConfig.from_world(world, device="cpu")


@pytest.fixture(scope="module")
def series(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the adapters name their base by a hub id: a warning, as for users
        return visual_probe.load_series(cfg)


@pytest.fixture(scope="module")
def records(cfg):
    return visual.read_records(cfg)


def _naive_belief(series, checkpoint, enc, cfg, every: bool = False):
    """The reference: softmax over labels of ``naive_label_logprobs`` (re-encoding image + prefix + label), at the
    last of the config's probe positions (or, ``every``, at each of them)."""
    tk = tokens_of(series.tokenizer, ProbeConfig(labels=LABELS_SORTED, template=cfg.template), LABELS_SORTED)
    [pos] = visual_probe._positions([enc], tk, series.tokenizer, cfg)  # occlusion: before the CoT by default
    with series.activate(checkpoint) as model:
        lp = naive_label_logprobs(model, series.processor, enc, pos if every else pos[-1:], tk)
    z = np.exp(lp - lp.max(-1, keepdims=True))
    z /= z.sum(-1, keepdims=True)  # (P, K) belief over the labels
    return z if every else z[-1]


def test_swap_changes_the_encoded_image_and_keeps_the_text_ids(series, records):
    record, donor = records[0], records[1]
    swapped = visual.swap_image(record, donor)
    assert swapped["images"] == visual.image_paths(donor) and swapped["method"] == "image_swap"
    assert (swapped["prompt"], swapped["completion"]) == (record["prompt"], record["completion"])
    a, b = encode_vl(series.processor, [record, swapped])
    pad = series.processor.token_id(IMAGE_PAD)
    assert [t for t in a.input_ids if t != pad] == [t for t in b.input_ids if t != pad]
    assert a.completion_ids == b.completion_ids and a.images_key != b.images_key
    assert a.pixel_values.shape != b.pixel_values.shape or not np.allclose(a.pixel_values, b.pixel_values)


def test_donors_are_other_studies_of_each_other_label(records):
    record = records[0]
    got = visual.donors(record, records, LABELS_SORTED, [], 1)
    assert sorted(d["label"] for d in got) == sorted(set(LABELS) - {record["label"]})
    assert all(not set(visual.image_paths(d)) & set(visual.image_paths(record)) for d in got)
    same = visual.donors(record, records, LABELS_SORTED, [record["label"]], 2)  # a control: the same label
    others = [r["id"] for r in records if r["label"] == record["label"] and r["id"] != record["id"]]
    assert [d["id"] for d in same] == others[:2] and others


def test_occlusion_changes_pixels_only_in_its_patch(series, records):
    image = load_image(records[0]["image_refs"][0])
    w, h = image.size
    boxes = visual.grid_boxes(w, h, 4)
    assert len(boxes) == 16 and boxes[0][:2] == (0, 0) and boxes[-1][2:] == (w, h)
    x0, y0, x1, y1 = boxes[5]
    before, after = np.asarray(image), np.asarray(visual.occlude(image, boxes[5], fill=7))
    inside = np.zeros((h, w), bool)
    inside[y0:y1, x0:x1] = True
    assert (after[inside] == 7).all() and (after[~inside] == before[~inside]).all()
    assert (before[inside] != 7).any()
    enc = encode_vl(series.processor, [records[0]])[0]
    variants = visual.occluded_encodings(series.processor, enc, image, boxes[:2], None)
    assert all(v.input_ids == enc.input_ids for v in variants)
    assert not np.allclose(variants[0].pixel_values, enc.pixel_values)


def test_beliefs_under_a_swap_equal_naive_reencoding_of_the_swapped_record(series, cfg, records):
    run_cfg = dataclasses.replace(cfg, kind="swap", traj_ids=[records[0]["id"]], batch_size=2)
    df = visual_probe.run(run_cfg, series=series)
    assert set(visual.SWAP_COLUMNS) <= set(df.columns)
    assert len(df) == (len(LABELS) - 1) * len(series.names)  # one donor of each other label x checkpoints
    row = df[df.checkpoint == "checkpoint-4"].iloc[0]
    donor = next(r for r in visual.read_records(cfg) if r["id"] == row["swapped_id"])
    enc = encode_vl(series.processor, [visual.swap_image(records[0], donor)])[0]
    ref = _naive_belief(series, "checkpoint-4", enc, cfg)
    np.testing.assert_allclose([row.belief_original, row.belief_swapped],
                               [ref[LABELS_SORTED.index(row.gold)], ref[LABELS_SORTED.index(row.swapped_label)]],
                               rtol=1e-4, atol=1e-5)
    assert row.answer_after == LABELS_SORTED[int(ref.argmax())]
    assert row.flipped == (row.answer_before != row.answer_after)


def test_swap_beliefs_at_sentence_ends_equal_naive_reencoding(series, cfg, records):
    run_cfg = dataclasses.replace(cfg, kind="swap", traj_ids=[records[2]["id"]], swap_to=["Pneumonia"],
                                  positions="sentence")
    df = visual_probe.run(run_cfg, series=series)
    rows = df[df.checkpoint == "checkpoint-2"].sort_values("position")
    assert len(rows) > 2 and rows["is_end"].tolist() == [False] * (len(rows) - 1) + [True]
    donor = next(r for r in records if r["id"] == rows.iloc[0]["swapped_id"])
    enc = encode_vl(series.processor, [visual.swap_image(records[2], donor)])[0]
    ref = _naive_belief(series, "checkpoint-2", enc, run_cfg, every=True)
    first = series.tokenizer(run_cfg.template, add_special_tokens=False)["input_ids"][0]
    positions = probe_positions(enc, "sentence", first, sentence_ids(series.tokenizer))
    assert rows["position"].tolist() == [j - enc.start for j in positions]
    np.testing.assert_allclose(rows["belief_swapped"], ref[:, LABELS_SORTED.index("Pneumonia")], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("at", ["start", "end"])
def test_occlusion_beliefs_equal_naive_reencoding_of_the_occluded_image(series, cfg, records, at):
    """Read before the CoT (the default: the image and prompt alone) or at its end, as the rows say."""
    run_cfg = dataclasses.replace(cfg, kind="occlusion", traj_ids=[records[1]["id"]], grid=2, batch_size=3, fill=0,
                                  occlusion_at=at)
    df = visual_probe.run(run_cfg, series=series)
    assert len(df) == 4 * len(LABELS) * len(series.names) and df["drop"].abs().max() > 0
    assert set(df["probed_at"]) == {visual.OCCLUSION_AT[at]}
    row = df[(df.checkpoint == "checkpoint-2") & (df.patch == 3)].iloc[0]
    image = load_image(records[1]["image_refs"][0])
    enc = encode_vl(series.processor, [records[1]])[0]
    [variant] = visual.occluded_encodings(series.processor, enc, image, [(row.x0, row.y0, row.x1, row.y1)], 0)
    tk = tokens_of(series.tokenizer, ProbeConfig(labels=LABELS_SORTED, template=run_cfg.template), LABELS_SORTED)
    [pos] = visual_probe._positions([variant], tk, series.tokenizer, run_cfg)
    assert (pos == [variant.start]) == (at == "start")  # before the CoT: right after the image and prompt
    ref = _naive_belief(series, "checkpoint-2", variant, run_cfg)
    got = df[(df.checkpoint == "checkpoint-2") & (df.patch == 3)].set_index("label")["belief"]
    np.testing.assert_allclose(got[LABELS_SORTED].to_numpy(), ref, rtol=1e-4, atol=1e-5)
    strongest = visual.strongest_label(df)
    assert df[df.label == strongest]["drop"].abs().max() == df["drop"].abs().max()
    top = visual.top_patches(df, "Edema")
    assert top["checkpoint"].tolist() == series.names
    for _, t in top.iterrows():
        assert t["drop"] == df[(df.checkpoint == t.checkpoint) & (df.label == "Edema")]["drop"].max()
    base = _naive_belief(series, "checkpoint-2", enc, run_cfg)
    np.testing.assert_allclose(df[(df.checkpoint == "checkpoint-2") & (df.patch == 0)].set_index("label")
                               ["base_belief"][LABELS_SORTED].to_numpy(), base, rtol=1e-4, atol=1e-5)


def test_a_picked_region_is_one_variant_clipped_to_the_image(series, cfg, records):
    run_cfg = dataclasses.replace(cfg, kind="occlusion", traj_ids=[records[0]["id"]], region=[10, 10, 5000, 40])
    df = visual_probe.run(run_cfg, series=series)
    w = load_image(records[0]["image_refs"][0]).size[0]
    assert set(df["patch"]) == {0} and (df["x1"] == w).all() and (df["y1"] == 40).all()
    with pytest.raises(InputError, match="outside"):
        visual_probe.run(dataclasses.replace(run_cfg, region=[4000, 4000, 5000, 5000]), series=series)


def test_a_full_checkpoint_series_loads_each_checkpoint_once_and_matches_naive(cfg, records, tmp_path):
    """A merged (full) VL checkpoint: checkpoint-outer, the batches made again under it; same beliefs."""
    import torch

    from core.models.families.qwen_vl.inputs import load_vl_model
    from core.models.series import load_series

    model = load_vl_model(cfg.base)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    model.save_pretrained(tmp_path / "checkpoint-8-merged")
    full = load_series(cfg.base, [tmp_path / "checkpoint-8-merged"], device="cpu")
    assert not full.shared_inputs
    run_cfg = dataclasses.replace(cfg, kind="occlusion", traj_ids=[records[0]["id"]], grid=2, batch_size=2)
    df = visual_probe.run(run_cfg, series=full)
    image = load_image(records[0]["image_refs"][0])
    enc = encode_vl(full.processor, [records[0]])[0]
    row = df[(df.checkpoint == "checkpoint-8-merged") & (df.patch == 2)].set_index("label")
    [variant] = visual.occluded_encodings(full.processor, enc, image, [tuple(row.iloc[0][["x0", "y0", "x1", "y1"]])],
                                          None)
    np.testing.assert_allclose(row["belief"][LABELS_SORTED].to_numpy(),
                               _naive_belief(full, "checkpoint-8-merged", variant, run_cfg), rtol=1e-4, atol=1e-5)
    base = df[(df.checkpoint == "base") & (df.patch == 2)].set_index("label")["belief"][LABELS_SORTED].to_numpy()
    assert not np.allclose(base, row["belief"][LABELS_SORTED].to_numpy())


def test_swap_with_decoding_adds_each_checkpoints_own_answer(series, cfg, records):
    run_cfg = dataclasses.replace(cfg, kind="swap", traj_ids=[records[0]["id"]], swap_to=["Edema"], decode=True,
                                  max_new_tokens=4)
    seen = []
    df = visual_probe.run(run_cfg, series=series, progress=lambda d, t, m: seen.append((d, t)))
    assert {"decoded_before", "decoded_after", "decoded_flipped"} <= set(df.columns) and len(df) == 3
    assert seen[-1][0] == seen[-1][1] == 2 * 3  # one batch probed and decoded under each of 3 checkpoints


def test_flip_rates_per_category_from_known_rows():
    rows = [("Edema", "base", 0, "Edema", "Edema", "Pneumonia"), ("Edema", "base", 0, "Edema", "Pneumonia", "Pneumonia"),
            ("Edema", "ck-2", 2, "Edema", "Edema", "Pneumonia"), ("Pneumonia", "base", 0, "Edema", "Edema", "Edema"),
            ("Pneumonia", "ck-2", 2, "Pneumonia", "Edema", "Edema")]
    df = pd.DataFrame(rows, columns=["gold", "checkpoint", "step", "answer_before", "answer_after", "swapped_label"])
    df = df.assign(flipped=df.answer_before != df.answer_after, is_end=True, belief_before=0.5,
                   belief_original=[0.4, 0.2, 0.5, 0.5, 0.1])
    df = pd.concat([df, df.head(1).assign(is_end=False, flipped=True)])  # a mid-CoT row: not counted
    got = visual.swap_flip_rates(df)
    assert list(got.columns) == ["category", "checkpoint", "step", "n", "flip_rate", "follows_image", "belief_change"]
    assert got[["category", "step", "n"]].values.tolist() == [["Edema", 0, 2], ["Edema", 2, 1], ["Pneumonia", 0, 1],
                                                              ["Pneumonia", 2, 1]]
    assert got["flip_rate"].tolist() == [0.5, 0.0, 0.0, 1.0]
    # Pneumonia at step 0 already answered Edema with its own image: it did not follow the swapped (Edema) image
    assert got["follows_image"].tolist() == [0.5, 0.0, 0.0, 1.0]
    assert (got["follows_image"] <= got["flip_rate"]).all()
    np.testing.assert_allclose(got["belief_change"], [-0.2, 0.0, 0.0, -0.4])


def test_cancel_stops_the_test_at_its_next_batch(series, cfg):
    run_cfg = dataclasses.replace(cfg, kind="occlusion", traj_ids=[], limit=2, grid=2, batch_size=2)
    seen = []
    with pytest.raises(Cancelled):
        visual_probe.run(run_cfg, series=series, progress=lambda d, t, m: seen.append((d, t)),
                   should_cancel=lambda: len(seen) > 2)
    assert seen[-1][0] < seen[-1][1]  # stopped before the end (5 variants x 2 studies in batches of 2, x 3)


def test_bad_configs_are_named(tmp_path, cfg):
    with pytest.raises(ValueError, match="kind"):
        visual.VisualConfig(kind="blur")
    with pytest.raises(ValueError, match="region"):
        visual.VisualConfig(region=[5, 5, 2, 9])
    with pytest.raises(InputError, match="no trajectory 'nope'"):
        visual.read_records(dataclasses.replace(cfg, traj_ids=["nope"]))
    bad = tmp_path / "visual.json"
    bad.write_text('{"kind": "swap", "colour": 1}')
    with pytest.raises(InputError, match=f"{bad}: unknown field 'colour' in the visual-drift config"):
        visual.VisualConfig.load(bad)


def test_the_worker_never_overwrites_a_file_it_did_not_write(tmp_path, cfg, capsys):
    from core.jobs import worker

    config = tmp_path / "visual.json"
    config.write_text(cfg.to_json())
    out = tmp_path / "notes.parquet"
    pd.DataFrame({"mine": [1]}).to_parquet(out)
    assert worker.main(["visual", "--config", str(config), "--out", str(out), "--force"]) == 2
    assert "did not write" in capsys.readouterr().err and list(pd.read_parquet(out).columns) == ["mine"]
    out = tmp_path / "result.parquet"
    visual.sidecar(out).write_text('{"my": "notes"}')  # the user's own file where the cost would go
    assert worker.main(["visual", "--config", str(config), "--out", str(out)]) == 2
    assert "did not write" in capsys.readouterr().err and visual.sidecar(out).read_text() == '{"my": "notes"}'
    assert not out.exists()


@pytest.mark.slow
def test_visual_runs_as_a_job_and_cancels(tmp_path, cfg, records):
    """The worker runs from the saved config; Cancel (SIGTERM) stops it with nothing written."""
    out = tmp_path / "swap.parquet"
    job_cfg = dataclasses.replace(cfg, kind="swap", traj_ids=[records[0]["id"]])
    argv, files = registry.command("visual", job_cfg, VisualOptions(out=str(out), force=True))
    job = jobs.start(tmp_path / "jobs", "visual", argv, files=files)
    assert job.wait(180) == "done", job.log_tail()
    assert visual.VisualConfig.load(job.dir / registry.CONFIG_FILE) == job_cfg
    df, meta = visual.read_result(out)
    assert len(df) == 3 * len(series_names(cfg)) and meta["variants"] == 3 and meta["checkpoints"] == 3
    assert meta["config"] == dataclasses.asdict(job_cfg) and meta["seconds"] > 0
    slow = dataclasses.replace(cfg, kind="occlusion", traj_ids=[], grid=8, batch_size=1)
    argv, files = registry.command("visual", slow, VisualOptions(out=str(tmp_path / "occlusion.parquet")))
    job = jobs.start(tmp_path / "jobs", "visual", argv, files=files)
    deadline = time.monotonic() + 120
    while job.progress()["done"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.state() == "running" and job.cancel()
    assert job.wait(60) == "cancelled", job.log_tail()
    assert not (tmp_path / "occlusion.parquet").exists() and "cancelled; nothing written" in job.log_tail()


def series_names(cfg):
    from core.models.checkpoints import resolve

    return ["base", *[c.name for c in resolve(cfg.checkpoints)]]
