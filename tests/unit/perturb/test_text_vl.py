"""Text perturbations of a vision-language world keep the study's X-ray: the twin (synonym swapped) is
probed and decoded with its images, its beliefs equal naive re-encoding of the twin with its image, and the
held-out set's synonym twins keep their source's images."""

import numpy as np
import pytest

from core.drift.analysis import AnalysisConfig
from core.drift.probe import ProbeConfig, probe_positions, tokens_of
from core.graph import concepts
from core.io.trajectories import read_trajectories
from core.models.families.qwen_vl.forward import naive_label_logprobs
from core.models.families.qwen_vl.generation import greedy_records
from core.models.families.qwen_vl.inputs import IMAGE_PAD
from core.models.series import load_series
from core.perturb import text as perturb
from core.perturb.evaluation import held_out, synonym_twins
from core.workspace.world import load_world
from tests.vl_world import LABELS, make_vl_world

FIND, REPLACE = "opacity", "lung opacity"  # in the CoTs of the Pneumonia and Lung Opacity studies


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_vl_world(tmp_path_factory.mktemp("vlpert"), held_out=4)


@pytest.fixture(scope="module")
def cfg(world):
    return AnalysisConfig.from_world(world, labels=LABELS, limit=4, device="cpu")  # float32, as the expectations


@pytest.fixture(scope="module")
def series(cfg):
    return load_series(cfg.base, cfg.checkpoints, device="cpu", vision=cfg.vision)


@pytest.fixture(scope="module")
def records(cfg):
    return read_trajectories(cfg.data, limit=4)


def _softmax(lp):
    z = np.exp(lp - lp.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def test_a_swap_keeps_the_images(records):
    twin = perturb.replace_span(records[0], FIND, REPLACE)
    assert twin["images"] == records[0]["images"] and twin["images"]
    assert REPLACE in twin["completion"] and "<image>" in twin["prompt"]


def test_the_probed_twin_equals_naive_re_encoding_with_its_image(series, records, cfg):
    df = perturb.perturbation_test(series, records, FIND, REPLACE, LABELS, mode="probe", template=cfg.template)
    hit = [r for r in records if perturb.replace_span(r, FIND, REPLACE)]
    assert len(hit) == 2 and set(df["traj_id"]) == {r["id"] for r in hit}
    pcfg = ProbeConfig(labels=LABELS, template=cfg.template)
    first = series.tokenizer(pcfg.template, add_special_tokens=False)["input_ids"][0]
    for rec in hit:
        twin = perturb.replace_span(rec, FIND, REPLACE)
        (enc,) = series.encode([twin])
        assert enc.pixel_values is not None and series.processor.token_id(IMAGE_PAD) in enc.input_ids
        j = probe_positions(enc, "end", first, set())[-1]
        for name in ("base", "checkpoint-4"):
            with series.activate(name) as model:
                naive = _softmax(naive_label_logprobs(model, series.processor, enc, [j], tokens_of(series.tokenizer, pcfg, LABELS)))[0]
            row = df[(df["traj_id"] == rec["id"]) & (df["checkpoint"] == name)].iloc[0]
            assert row["gold_after"] == pytest.approx(naive[LABELS.index(rec["label"])], abs=1e-5)
            assert row["answer_after"] == LABELS[int(naive.argmax())]


def test_generate_mode_decodes_each_record_with_its_image(series, records):
    """Generate mode answers what greedy decoding of the (swapped) record with its image answers. The tiny
    random model writes no disease, so the "labels" are the words it does write: every answer is a word."""
    import re

    hit = [r for r in records if perturb.replace_span(r, FIND, REPLACE)]
    with series.activate("checkpoint-2") as model:
        texts = greedy_records(model, series.processor, [perturb.replace_span(r, FIND, REPLACE) for r in hit])
    words = sorted({w for t in texts for w in re.findall(r"[A-Za-z]{3,}", t)})
    expected = [perturb.find_answer(t, words) for t in texts]
    assert all(expected), texts
    df = perturb.perturbation_test(series, records, FIND, REPLACE, words, mode="generate")
    got = df[df["checkpoint"] == "checkpoint-2"].set_index("traj_id")["answer_after"]
    assert [got[r["id"]] for r in hit] == expected


def test_held_out_synonym_twins_keep_their_source_images(world):
    w = load_world(world)
    held = held_out(w)
    assert held.origin == "graph synonyms" and len(held.perturbed) == len(held.records) == 4
    by_id = {r["id"]: r for r in held.records}
    for twin in held.perturbed:
        source = by_id[twin["source_id"]]
        assert twin["images"] == source["images"] and twin["prompt"] != source["prompt"]
        assert twin["chat"][-1]["content"] == twin["prompt"]  # the conversation the chat template renders
    assert synonym_twins(held.records, concepts.load_graph(w.graph_path)) == held.perturbed


def test_the_perturb_job_reads_images_at_the_analysis_pixel_limits(cfg, records, tmp_path):
    """``core.jobs.worker perturb`` (``core.perturb.job.run_perturb``) on a VL analysis: the series is loaded with the analysis's pixel limits and
    the rows equal ``perturbation_test`` on that series (images read, the analysis's answer template)."""
    import dataclasses

    import pandas as pd

    from core.perturb.job import PerturbOptions, run_perturb

    small = dataclasses.replace(cfg, max_pixels=28 * 28 * 4)  # fewer image tokens than the default
    out = tmp_path / "swap.parquet"
    assert run_perturb(small, PerturbOptions(out=str(out), find=FIND, replace=REPLACE, mode="probe")) == 0
    got = pd.read_parquet(out)
    series = load_series(small.base, small.checkpoints, device="cpu", vision=small.vision)
    (enc,) = series.encode(records[:1])
    default = load_series(cfg.base, cfg.checkpoints, device="cpu")
    assert len(enc.input_ids) < len(default.encode(records[:1])[0].input_ids)
    expected = perturb.perturbation_test(series, records, FIND, REPLACE, LABELS, mode="probe",
                                         template=small.template)
    assert got["gold_after"].tolist() == pytest.approx(expected["gold_after"].tolist(), abs=1e-5)
