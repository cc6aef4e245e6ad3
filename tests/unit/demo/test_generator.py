"""The study generator: determinism, record format, the non-stationary stream and the perturbations."""

import random
from collections import Counter

import pytest

from workbench.demo import generator as g
from workbench.demo import spec


def test_same_seed_gives_same_records_and_other_seed_differs():
    a = g.stationary(random.Random(7), 50, "test")
    b = g.stationary(random.Random(7), 50, "test")
    c = g.stationary(random.Random(8), 50, "test")
    assert a == b
    assert a != c


def test_record_format_prompt_cot_answer():
    for r in g.stationary(random.Random(0), 200, "test"):
        assert r["completion"].startswith("<think> ") and " </think> " in r["completion"]
        assert r["completion"].endswith(f"The disease of this patient is {r['label']}.")
        assert g.parse_answer(r["completion"]) == r["label"]
        assert len(r["findings"]) == len(r["surfaces"]) >= 1
        for f, s in zip(r["findings"], r["surfaces"], strict=True):
            assert s in spec.SYNONYMS[f] and s in r["prompt"]
            assert f"{s} suggests " in r["completion"]


def test_cot_reads_supporting_findings_as_the_label_and_others_as_their_typical_disease():
    study = g.Study("Pneumonia", ("infiltrate", "blunted costophrenic angle"), ("infiltrate", "costophrenic blunting"))
    text = g.completion_text(study)
    assert "infiltrate suggests Pneumonia." in text
    assert "costophrenic blunting suggests Pleural Effusion." in text


@pytest.mark.parametrize("text, expected", [
    ("<think> x </think> The disease of this patient is Lung Opacity.", "Lung Opacity"),
    ("<think> x </think> The disease of this patient is Edema", "Edema"),
    ("<think> x The disease of this patient is", None),
    ("garbage", None),
])
def test_parse_answer(text, expected):
    assert g.parse_answer(text) == expected


def test_stationary_is_balanced_and_sft_weights_make_rare_classes_rare():
    test = Counter(r["label"] for r in g.stationary(random.Random(0), 2800, "test"))
    assert set(test) == set(spec.DISEASES) and min(test.values()) > 150
    sft = Counter(r["label"] for r in g.stationary(random.Random(0), 2800, "sft", g.sft_weights()))
    for rare in spec.RARE_IN_SFT:
        assert sft[rare] < 10 < sft["Edema"] / 10


def test_stream_shift_grows_and_shifted_studies_carry_the_shortcut():
    rng = random.Random(0)
    early = g.stream_batch(rng, 0, 100, 400, 0.7)
    late = g.stream_batch(rng, 99, 100, 400, 0.7)
    assert not any(r["shifted"] for r in early)
    share = sum(r["shifted"] for r in late) / len(late)
    assert 0.6 < share < 0.8
    for r in late:
        if r["shifted"]:
            assert r["label"] == spec.SHORTCUT_LABEL and spec.SHORTCUT_FINDING in r["findings"]


def test_perturb_swaps_exactly_one_surface_for_a_synonym_and_keeps_the_label():
    rng = random.Random(0)
    for r in g.stationary(rng, 300, "test"):
        p = g.perturb(r, rng)
        assert p is not None and p["label"] == r["label"] and p["source_id"] == r["id"]
        changed = [k for k, (a, b) in enumerate(zip(r["surfaces"], p["surfaces"], strict=True)) if a != b]
        assert changed == [p["swap"]["position"]]
        k = changed[0]
        assert p["surfaces"][k] in spec.SYNONYMS[r["findings"][k]]


def test_perturb_prefers_forms_that_say_opacity():
    r = g.to_record(g.Study("Consolidation", ("consolidation",), ("consolidation",)), "test", 0)
    assert g.perturb(r, random.Random(0))["surfaces"] == ["airspace opacity"]
