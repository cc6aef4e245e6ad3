"""Drift findings: the statistics on handcrafted data, and the demo world's real drift found by the engine."""

import numpy as np
import pandas as pd
import pytest

from core.drift import findings as drift
from core.io.trajectories import Encoded


def test_sign_flip_test_and_holm():
    rng = np.random.default_rng(0)
    assert drift.sign_flip_test(rng.normal(0.5, 0.1, 40)) < 0.01
    assert drift.sign_flip_test(rng.normal(0.0, 1.0, 40)) > 0.05
    assert drift.sign_flip_test(np.zeros(10)) == 1.0
    adj = drift.holm([0.01, 0.04, 0.03])
    assert adj == pytest.approx([0.03, 0.06, 0.06])


def test_page_hinkley_alarms_on_a_sustained_fall_only():
    assert drift.page_hinkley([0.9, 0.91, 0.9, 0.92, 0.9, 0.91]) is None
    assert drift.page_hinkley([0.9, 0.91, 0.9, 0.6, 0.62, 0.6]) == 3


def _enc(tokens, start, tid="t1"):
    return Encoded(tid, list(range(len(tokens))), start, len(tokens), "Pneumonia", tokens)


def test_token_effects_and_direction_on_a_handcrafted_trajectory():
    e = _enc(["<s>", " opacity", " suggests", " X"], start=1)
    rows = []
    for step, golds in ((0, [0.5, 0.5, 0.6, 0.9]), (10, [0.5, 0.2, 0.3, 0.9])):
        rows += [{"traj_id": "t1", "checkpoint": f"c{step}", "step": step, "position": p, "gold_prob": g}
                 for p, g in zip(range(0, 4), golds, strict=True)]
    eff = drift.token_effects(pd.DataFrame(rows), [e])
    late = eff[eff.step == 10].set_index("position")
    assert late.loc[0, "token"] == " opacity"
    assert late.loc[0, "effect"] == pytest.approx(-0.3) and late.loc[0, "effect_drift"] == pytest.approx(-0.3)
    assert late.loc[0, "direction"] == "detrimental"
    assert late.loc[2, "effect_drift"] == pytest.approx(0.3) and late.loc[2, "direction"] == "beneficial"
    assert late.loc[1, "direction"] == "neutral"


def test_concept_spans_prefer_the_longest_surface():
    import networkx as nx

    g = nx.DiGraph()
    g.add_node("opacity", kind="finding", label="opacity", synonyms=["lung opacity"])
    g.add_node("consolidation", kind="finding", label="consolidation", synonyms=["airspace opacity"])
    e = _enc(["<s>", " airspace", " opacity", " and", " opacity"], start=1)
    spans = drift.concept_spans(e, drift.concept_surfaces(g))
    assert sorted(spans) == [("consolidation", 0, 2), ("opacity", 3, 4)]


@pytest.fixture(scope="module")
def world_analysis(sample_world, tmp_path_factory):
    from core.drift.analysis import AnalysisConfig, run_analysis

    cfg = AnalysisConfig.from_world(sample_world, limit=70, include_prompt=False, top_k=3)
    return run_analysis(cfg, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
def test_engine_finds_the_opacity_shortcut_at_the_reading_after_opacity(world_analysis):
    """After "opacity suggests", RFT checkpoints come to predict "Lung" (Opacity) instead of the gold disease."""
    ctx = world_analysis.by_context.set_index(["step", "context"])
    early, late = ctx.loc[(40, "opacity suggests")], ctx.loc[(160, "opacity suggests")]
    assert late["mean_kl_base"] > 20 * early["mean_kl_base"]
    assert late["new_top1"] == " Lung" and late["direction"] == "detrimental"
    assert late["share_top1_changed"] > 0.4
    top = world_analysis.by_context[world_analysis.by_context.step == 160].head(10)
    assert top["new_top1"].isin([" Lung", " Opacity"]).mean() >= 0.6  # the shortcut dominates the drift then


@pytest.mark.slow
def test_engine_detects_the_detrimental_step_and_summarises(world_analysis):
    changes = world_analysis.changes.set_index("to_step")
    assert changes.loc[160, "changed"] and changes.loc[160, "direction"] == "detrimental"
    assert changes.loc[160, "page_hinkley_alarm"]
    summary = world_analysis.summary.set_index("step")
    assert summary.loc[160, "kl_base"] > 5 * summary.loc[40, "kl_base"]
    assert summary.loc[160, "accuracy"] < summary.loc[0, "accuracy"]


@pytest.mark.slow
def test_near_synonym_swap_flips_answers_only_after_drift(sample_world):
    from core.io.trajectories import read_jsonl
    from core.models.series import load_series
    from core.perturb.text import (
        category_flips,
        perturbation_summary,
        perturbation_test,
    )
    from workbench.demo.spec import DISEASES

    series = load_series(sample_world / "model", sample_world / "rft", base_names=["cxr-demo-tiny-llama"])
    recs = read_jsonl(sample_world / "data" / "test.jsonl")
    df = perturbation_test(series, recs, "consolidation", "airspace opacity", list(DISEASES))
    summary = perturbation_summary(df).set_index("step")
    assert summary.loc[0, "flip_rate"] <= 0.02
    assert summary.loc[160, "flip_rate"] > 0.2
    assert summary.loc[160, "accuracy_after"] < summary.loc[160, "accuracy_before"]
    assert set(category_flips(df)["gold"]) >= {"Consolidation", "Pneumonia"}


def test_base_is_found_by_name_even_when_steps_collide():
    """Checkpoints without step information (or two runs' checkpoint-40) must not be mistaken for the base."""
    e = _enc(["<s>", " a", " b"], start=1)
    rows = [{"traj_id": "t1", "checkpoint": c, "step": st, "position": p, "gold_prob": g, "answer": "Pneumonia",
             "gold": "Pneumonia"}
            for c, st, golds in (("base", 0, [0.5, 0.6, 0.7]), ("run_a", 0, [0.5, 0.4, 0.3]), ("run_b", 0, [0.5, 0.5, 0.9]))
            for p, g in zip(range(3), golds, strict=True)]
    beliefs = pd.DataFrame(rows)
    eff = drift.token_effects(beliefs, [e])
    assert len(eff) == 3 * 2  # two read tokens per checkpoint, no duplicated base rows
    assert eff[eff.checkpoint == "base"]["effect_drift"].abs().max() == 0
    changes = drift.step_changes(beliefs)
    assert list(changes["to_checkpoint"]) == ["run_a", "run_b"]


def _reference_concept_spans(enc, surfaces):
    """The former implementation: every token rescanned per mention."""
    import re

    text, starts = "", []
    for tok in enc.tokens:
        starts.append(len(text))
        text += tok
    starts.append(len(text))
    taken = np.zeros(len(text), dtype=bool)
    out = []
    for surface, concept in surfaces:
        for m in re.finditer(rf"(?<![\w]){re.escape(surface)}(?![\w])", text):
            if taken[m.start(): m.end()].any():
                continue
            taken[m.start(): m.end()] = True
            toks = [i for i in range(len(enc.tokens)) if starts[i] < m.end() and starts[i + 1] > m.start()]
            out.append((concept, toks[0] - enc.start, toks[-1] + 1 - enc.start))
    return out


def _reference_drivers_by_concept(effects, encoded, graph, tau=drift.TAU):
    """The former implementation: every mention joined with every effect row of its trajectory."""
    surfaces = drift.concept_surfaces(graph)
    spans = [(e.id, c, a, b) for e in encoded for c, a, b in _reference_concept_spans(e, surfaces)]
    sp = pd.DataFrame(spans, columns=["traj_id", "concept", "first", "end"])
    m = sp.merge(effects[["traj_id", "checkpoint", "step", "position", "effect_drift"]], on="traj_id")
    m = m[(m["position"] >= m["first"]) & (m["position"] < m["end"])]
    per = m.groupby(["traj_id", "concept", "first", "checkpoint", "step"])["effect_drift"].sum().reset_index()
    per = per[~drift.is_base(per)]
    agg = per.groupby(["checkpoint", "step", "concept"]).agg(
        n=("effect_drift", "size"), mean_effect_drift=("effect_drift", "mean"),
        share_detrimental=("effect_drift", lambda s: (s < -tau).mean()),
        share_beneficial=("effect_drift", lambda s: (s > tau).mean())).reset_index()
    agg["direction"] = np.where(agg["mean_effect_drift"] < 0, "detrimental", "beneficial")
    return agg.sort_values(["step", "mean_effect_drift"]).reset_index(drop=True)


@pytest.mark.parametrize("every", [1, 3])  # a probe at every token; at every third (multi-token reads)
def test_linear_time_drift_tables_equal_the_former_joins(every):
    import networkx as nx

    rng = np.random.default_rng(every)
    g = nx.DiGraph()
    g.add_node("opacity", kind="finding", label="opacity", synonyms=["lung opacity"])
    g.add_node("consolidation", kind="finding", label="consolidation", synonyms=["airspace opacity"])
    g.add_node("effusion", kind="finding", label="effusion", synonyms=[])
    words = [" lung", " opacity", " airspace", " consol", "idation", " effusion", " and", " no", ".", " opac", "ity"]
    encoded, rows = [], []
    for t in range(12):
        toks = ["<s>", " report"] + list(rng.choice(words, size=int(rng.integers(5, 60))))
        e = _enc(toks, start=2, tid=f"t{t}")
        encoded.append(e)
        positions = list(range(0, len(toks) - 2, every)) + [len(toks) - 2]
        for step, name in ((0, "base"), (5, "c5"), (10, "c10")):
            rows += [{"traj_id": e.id, "checkpoint": name, "step": step, "position": p, "answer": "Pneumonia",
                      "gold": "Pneumonia", "gold_prob": float(rng.random())} for p in sorted(set(positions))]
    beliefs = pd.DataFrame(rows)
    eff = drift.token_effects(beliefs, encoded)
    want_tokens = ["".join(next(e for e in encoded if e.id == t).tokens[2 + p: 2 + q])
                   for t, p, q in zip(eff["traj_id"], eff["position"], eff["next_position"], strict=True)]
    assert eff["token"].tolist() == want_tokens
    for e in encoded:
        assert drift.concept_spans(e, drift.concept_surfaces(g)) == _reference_concept_spans(e, drift.concept_surfaces(g))
    acc = drift.DriftParts(g)  # the engine's table, its trajectories in two parts
    for part in (encoded[:5], encoded[5:]):
        acc.add_beliefs(beliefs[beliefs["traj_id"].isin({e.id for e in part})], part)
    got = acc.tables()["by_concept"]
    want = _reference_drivers_by_concept(eff, encoded, g)
    assert len(got) == len(want) > 0
    pd.testing.assert_frame_equal(got, want, check_dtype=False, atol=1e-9)


@pytest.mark.slow
def test_the_part_by_part_drift_step_writes_the_whole_table_step_s_folder(world_analysis, tmp_path):
    """The sample world's analysis (its tables computed part by part from the cached scoring and probe parts)
    saved = the whole-table reference (``tests.drift_reference.assemble``) of the same scores and beliefs, saved."""
    from core.drift import analysis as an
    from core.io.trajectories import encode
    from core.models.loading import load_tokenizer
    from core.models.series import branch_starts, plan_series
    from tests.drift_reference import assemble
    from tests.unit.drift.test_findings_parts import assert_same_folders

    cfg = world_analysis.config
    records = world_analysis.records
    encoded = encode(load_tokenizer(cfg.base), records, chat_template=cfg.chat_template)
    _, graph = an.resolve_labels(cfg, records)
    _, infos, _, _ = plan_series(cfg.base, cfg.checkpoints, cfg.device, cfg.dtype)
    whole = assemble(cfg, records, encoded, graph, world_analysis.tokens, world_analysis.beliefs,
                        branch_starts(infos))
    assert len(world_analysis.tokens["traj_id"].unique()) == 70 and len(whole.by_context) > 0
    assert_same_folders(whole.save(tmp_path / "whole"), world_analysis.save(tmp_path / "parts"))


def test_category_accuracy_counts_the_trajectories_the_summary_counts():
    """A gold label the probe does not know (no gold_prob) is left out of its category, as of the summary's
    accuracy, instead of a row reading 0.00 at every checkpoint."""
    rows = []
    for ck, step in (("base", 0), ("checkpoint-1", 1)):
        rows += [{"traj_id": "a", "checkpoint": ck, "step": step, "position": 9, "gold": "Edema", "gold_prob": 0.9,
                  "answer": "Edema"},
                 {"traj_id": "b", "checkpoint": ck, "step": step, "position": 9, "gold": "Edema", "gold_prob": 0.2,
                  "answer": "Pneumonia"},
                 {"traj_id": "c", "checkpoint": ck, "step": step, "position": 9, "gold": "edema (mild)",
                  "gold_prob": np.nan, "answer": "Edema"}]
    table = drift.category_accuracy(pd.DataFrame(rows))
    assert list(table.index) == ["Edema"] and list(table.columns) == ["base", "checkpoint-1"]
    assert (table.loc["Edema"] == 0.5).all()


def test_a_step_with_no_trajectory_to_compare_is_no_result_not_a_beneficial_zero():
    """Two checkpoints whose final gold beliefs are never both measured (every gold unread at one of them): the step's
    change is NaN with n_pairs 0, neither detrimental nor beneficial (it read 0.0, p 1.0, "beneficial")."""
    rows = []
    for ck, step, prob in (("base", 0, 0.9), ("checkpoint-1", 1, np.nan), ("checkpoint-2", 2, 0.5)):
        for t in ("a", "b"):
            rows.append({"traj_id": t, "checkpoint": ck, "step": step, "position": 5, "gold_prob": prob})
    changes = drift.step_changes(pd.DataFrame(rows), n_permutations=50).set_index("to_checkpoint")
    assert changes.at["checkpoint-1", "n_pairs"] == 0 and np.isnan(changes.at["checkpoint-1", "mean_change"])
    assert changes.at["checkpoint-1", "direction"] == "" and not changes.at["checkpoint-1", "changed"]
    assert changes.at["checkpoint-2", "n_pairs"] == 0  # against checkpoint-1, which has none
