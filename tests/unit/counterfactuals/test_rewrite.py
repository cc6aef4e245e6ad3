"""Counterfactuals: the rewrite rules on handcrafted cases, the consistency score, target choice, storage with
provenance, a cancelled batch, and the LLM expert on a real (tiny) local model."""

import json

import pytest

from core.counterfactuals.expert import Expert, ExpertConfig, fit_prompt
from core.counterfactuals.rewrite import (
    answer_of,
    changed_spans,
    choose_targets,
    consistency,
    find_mentions,
    make_counterfactuals,
    rewrite,
)
from core.counterfactuals.store import (
    generate_batch,
    list_counterfactuals,
    store_counterfactuals,
)
from core.errors import InputError
from core.graph import concepts
from core.io.store import Store
from core.io.trajectories import read_jsonl
from core.models.series import load_series


@pytest.fixture(scope="module")
def graph(sample_world):
    return concepts.load_graph(sample_world / "concept_graph.json")


def cot(*steps: str, answer: str) -> str:
    return f"<think> {' '.join(steps)} The findings point to {answer}. </think> The disease of this patient is {answer}."


REWRITES = [
    # the true disease's findings swapped for the target's, heaviest edge first, same synonym index
    (cot("blunted costophrenic angle suggests Pleural Other.", "thickened pleura suggests Pleural Other.",
         answer="Pleural Other"), "Pleural Other", "Edema",
     cot("blunted costophrenic angle suggests Edema.", "venous congestion suggests Edema.", answer="Edema")),
    # target supporters run out: the third finding's sentence is dropped
    (cot("blunted costophrenic angle suggests Pleural Other.", "thickened pleura suggests Pleural Other.",
         "pleural plaque suggests Pleural Other.", answer="Pleural Other"), "Pleural Other", "Fracture",
     cot("rib fracture suggests Fracture.", "healing callus suggests Fracture.", answer="Fracture")),
    # findings the target excludes disappear (clear lungs excludes Pneumonia)
    (cot("clear lungs suggests No Finding.", "normal cardiac size suggests No Finding.", answer="No Finding"),
     "No Finding", "Pneumonia",
     cot("infiltrate suggests Pneumonia.", "airspace consolidation suggests Pneumonia.", answer="Pneumonia")),
    # a finding that supports the target is kept; the finding "consolidation" is not the disease "Consolidation"
    (cot("consolidation suggests Consolidation.", answer="Consolidation"), "Consolidation", "Pneumonia",
     cot("consolidation suggests Pneumonia.", answer="Pneumonia")),
    # free text: capitals kept, a finding neither disease knows (rib fracture) kept
    ("Report: Lungs are clear, rib fracture and normal heart size. Impression: No Finding.", "No Finding", "Edema",
     "Report: Venous congestion, rib fracture and perihilar haze. Impression: Edema."),
    # free text: an excluded finding beside others loses only itself and its conjunction
    ("Nodule and absent lung markings are seen. Impression: Lung Lesion.", "Lung Lesion", "Consolidation",
     "Consolidation are seen. Impression: Consolidation."),  # grammar is not the rule's business
    # every finding of a sentence dropped: the sentence goes (target supporters used up by the first one)
    ("Rib fracture. Clear lungs and absent lung markings noted. Impression: Fracture.", "Fracture", "Atelectasis",
     "Linear band. Impression: Atelectasis."),
    # two dropped findings beside a kept one never cut into each other
    ("Normal heart size, clear lungs and absent lung markings. Impression: Lung Opacity.", "Lung Opacity",
     "Atelectasis", "Normal heart size. Impression: Atelectasis."),
]


@pytest.mark.parametrize("text,true,target,expected", REWRITES)
def test_rewrite_rules_on_handcrafted_cases(graph, text, true, target, expected):
    assert rewrite(graph, text, true, target).text == expected


def test_rewrite_logs_each_change_and_refuses_bad_targets(graph):
    rw = rewrite(graph, REWRITES[1][0], "Pleural Other", "Fracture")
    assert sorted(s["action"] for s in rw.swaps) == ["answer"] * 4 + ["drop", "swap", "swap"]
    assert rw.swaps[0] == {"action": "drop", "from": "pleural plaque", "to": "", "node": "pleural plaque"}
    with pytest.raises(InputError, match="target 'opacity' is not a disease"):
        rewrite(graph, "x", "Edema", "opacity")
    with pytest.raises(InputError, match="must differ from the true disease"):
        rewrite(graph, "x", "Edema", "Edema")


def test_mentions_prefer_longer_names_and_keep_diseases_apart(graph):
    text = "lung opacity and airspace opacity suggest Lung Opacity."
    found = [(text[m.start:m.end], m.node, m.kind) for m in find_mentions(graph, text)]
    assert found == [("lung opacity", "opacity", "finding"), ("airspace opacity", "consolidation", "finding"),
                     ("Lung Opacity", "Lung Opacity", "disease")]


def test_consistency_scores_support_exclusion_and_format(graph):
    original = REWRITES[2][0]
    good = rewrite(graph, original, "No Finding", "Pneumonia").text
    c = consistency(graph, good, "Pneumonia", original)
    assert (c.score, c.support, c.no_excluded, c.format_kept) == (1.0, 1.0, 1.0, 1.0)
    bad = cot("clear lungs suggests Pneumonia.", "infiltrate suggests Pneumonia.", answer="No Finding")
    c = consistency(graph, bad, "Pneumonia", original)
    assert c.excluded == ("clear lungs",) and c.no_excluded == 0.0 and c.support == 0.5
    assert c.format_kept == pytest.approx(2 / 3, abs=1e-3)  # think tags kept, answer wrong
    assert c.score == pytest.approx((0.5 + 0 + 2 / 3) / 3, abs=1e-3)
    assert consistency(graph, "no findings here", "Pneumonia", original).score < 0.34
    assert answer_of(good) == "Pneumonia"


def test_graph_rewrites_of_the_test_set_are_fully_consistent(graph, sample_world):
    records = read_jsonl(sample_world / "data" / "test.jsonl", limit=40)
    skipped: list[str] = []  # a rewrite that changes no finding (a study without one) is not a counterfactual
    scores = [cf.consistency.score for r in records
              for cf in make_counterfactuals(graph, r, choose_targets(graph, r["label"], "all"), skipped=skipped)]
    assert len(scores) + len(skipped) == 40 * 13 and len(skipped) < 40 and min(scores) == 1.0


def test_target_choice(graph):
    assert choose_targets(graph, "Pneumonia", "one", "Edema") == ["Edema"]
    assert len(choose_targets(graph, "Pneumonia", "all")) == 13
    assert choose_targets(graph, "Pneumonia", "confusable") == concepts.confusable(graph, "Pneumonia")
    assert "Fracture" not in choose_targets(graph, "Pneumonia", "confusable")
    with pytest.raises(InputError, match="not a disease"):
        choose_targets(graph, "Pneumonia", "one", "opacity")


def test_changed_spans_mark_only_the_swapped_words():
    left, right = changed_spans("opacity suggests Edema.", "infiltrate suggests Pneumonia.")
    assert [t for t, changed in left if changed] == ["opacity", "Edema"]
    assert [t for t, changed in right if changed] == ["infiltrate", "Pneumonia"]
    assert "".join(t for t, _ in right) == "infiltrate suggests Pneumonia."
    left, right = changed_spans("clear lungs suggests No Finding.", "infiltrate suggests Pneumonia.")
    assert [t for t, changed in left if changed] == ["clear lungs", "No Finding"]


def test_storage_keeps_provenance_and_deduplicates(graph, sample_world, tmp_path):
    db = Store.open(tmp_path / "w.db")
    rec = read_jsonl(sample_world / "data" / "test.jsonl", limit=1)[0]
    cfs = make_counterfactuals(graph, rec, ["Edema", "Fracture"], graph_version=7)
    ids = store_counterfactuals(db, rec, "demo:test", cfs)
    assert store_counterfactuals(db, rec, "demo:test", cfs) == ids  # stored once
    df = list_counterfactuals(db, "demo:test")
    assert len(df) == 2 and set(df["target"]) == {"Edema", "Fracture"}
    row = df.iloc[0]
    assert (row["method"], row["graph_version"], row["trajectory"], row["label"]) == ("graph", 7, rec["id"], rec["label"])
    assert json.loads(row["settings"])["swaps"]
    assert db.con.execute("SELECT COUNT(*) FROM trajectories").fetchone()[0] == 1


def test_a_cancelled_batch_keeps_what_it_finished(graph, sample_world, tmp_path):
    db = Store.open(tmp_path / "w.db")
    records = read_jsonl(sample_world / "data" / "test.jsonl", limit=30)
    batch = generate_batch(db, graph, records, "demo:test", "all", graph_version=1)
    seen = [next(batch) for _ in range(3)]
    batch.close()  # the Stop button
    assert [p.done for p in seen] == [1, 2, 3] and seen[-1].total == 30
    stored = db.con.execute("SELECT COUNT(DISTINCT t.external_id) FROM counterfactuals c "
                            "JOIN trajectories t ON t.id = c.trajectory_id").fetchone()[0]
    assert stored == 3 and len(list_counterfactuals(db)) == seen[-1].stored


@pytest.fixture(scope="module")
def tiny_series(sample_world):
    return load_series(sample_world / "model")  # the demo world's tiny Llama (0.8 M parameters)


def test_expert_config_is_checked():
    with pytest.raises(InputError, match=r"must contain \{graph\}"):
        ExpertConfig(template="{report} {disease}")
    with pytest.raises(InputError, match="temperature must be > 0"):
        ExpertConfig(temperature=0)


def test_prompt_is_fitted_to_the_model_context(graph, tiny_series):
    tok = tiny_series.tokenizer
    cfg = ExpertConfig(max_new_tokens=32, graph_scope="all")
    ids, info = fit_prompt(tok, cfg, graph, "clear lungs suggests No Finding.", "No Finding", "Edema", context=256)
    assert len(ids) + 32 <= 256 and info["graph_lines"] < info["graph_lines_total"] == 57
    from core.counterfactuals.expert import build_prompt
    from core.io.trajectories import prompt_ids

    one_more = "\n".join(concepts.serialise(graph, None).splitlines()[: info["graph_lines"] + 1])
    assert len(prompt_ids(tok, build_prompt(cfg.template, "clear lungs suggests No Finding.", one_more, "Edema"))) > 256 - 32
    ids, info = fit_prompt(tok, cfg, graph, "x", "No Finding", "Edema", context=None)
    assert info["graph_lines"] == 57 and info["tokens_cut"] == 0


def test_llm_expert_writes_stored_counterfactuals_with_provenance(graph, tiny_series, sample_world, tmp_path):
    rec = read_jsonl(sample_world / "data" / "test.jsonl", limit=1)[0]
    expert = Expert(tiny_series, "base", ExpertConfig(max_new_tokens=24, seed=3))
    a = make_counterfactuals(graph, rec, ["Edema"], "llm", 2, expert)[0]
    b = make_counterfactuals(graph, rec, ["Edema"], "llm", 2, expert)[0]
    assert a.completion == b.completion and a.completion.strip()  # seeded sampling repeats
    db = Store.open(tmp_path / "w.db")
    store_counterfactuals(db, rec, "demo:test", [a])
    row = list_counterfactuals(db).iloc[0]
    settings = json.loads(row["settings"])
    assert (row["method"], row["model"], row["graph_version"]) == ("llm", "model@base", 2)
    assert settings["seed"] == 3 and settings["temperature"] == 0.7 and settings["checkpoint"] == "base"
    assert "{report}" in settings["template"] and settings["prompt_tokens"] + 24 <= 256
    with pytest.raises(InputError, match="needs a loaded model"):
        make_counterfactuals(graph, rec, ["Edema"], "llm")
