"""CPO runs as branches of their start checkpoint, and the start vs repaired comparison."""

import json

import pandas as pd

from core.models.branches import branch_of, compare, run_branches
from workbench import charts


def fake_run(root, name="fix-1", start="checkpoint-160", steps=60):
    adapter = root / "runs" / "cpo" / name / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "trainer_state.json").write_text(json.dumps({"global_step": 160 + steps, "run_steps": steps}))
    (adapter.parent / "config.json").write_text(json.dumps({"init_adapter": f"/w/rft/{start}"}))
    return adapter


def test_a_joined_cpo_run_is_a_branch_of_its_start(tmp_path):
    adapter = fake_run(tmp_path)
    b = branch_of(adapter)
    assert (b.name, b.start, b.run_steps) == ("fix-1", "checkpoint-160", 60)
    assert branch_of(tmp_path / "runs") is None  # an RFT checkpoint or any other folder is not
    assert list(run_branches(["/w/rft/checkpoint-160", str(adapter)])) == ["fix-1"]
    assert run_branches("/w/rft") == {}


def test_compare_counts_flips_and_ranks_tokens():
    beliefs = pd.DataFrame([
        {"traj_id": t, "checkpoint": c, "position": p, "answer": ans, "gold": "Edema", "gold_prob": g}
        for t, c, p, ans, g in [("a", "ck", 5, "Lung Opacity", 0.1), ("a", "fix", 5, "Edema", 0.8),
                                ("b", "ck", 5, "Edema", 0.9), ("b", "fix", 5, "Mass", 0.2),
                                ("c", "ck", 5, "Edema", 0.7), ("c", "fix", 5, "Edema", 0.75),
                                ("a", "ck", 1, "Edema", 0.5), ("a", "fix", 1, "Edema", 0.5)]])
    tokens = pd.DataFrame([{"traj_id": "a", "checkpoint": c, "position": 1, "token": tok, "logprob": lp,
                            "in_think": True, "kl_base": kl}
                           for c, tok, lp, kl in [("ck", " Lung", -0.1, 2.0), ("fix", " Lung", -3.0, 0.5)]])
    cmp = compare(tokens, beliefs, "ck", "fix")
    assert cmp.summary["model"].tolist() == ["start: ck", "repaired: fix"]
    assert cmp.summary["probe_accuracy"].round(3).tolist() == [0.667, 0.667]
    assert dict(zip(cmp.flips["traj_id"], cmp.flips["flip"], strict=True)) == {"a": "fixed", "b": "broken"}
    assert cmp.tokens.iloc[0]["token"] == " Lung" and round(cmp.tokens.iloc[0]["mean_logprob_change"], 3) == -2.9


def test_the_summary_chart_draws_a_branch_above_its_start_not_on_the_step_axis(tmp_path):
    summary = pd.DataFrame({"checkpoint": ["base", "checkpoint-160", "fix-1", "checkpoint-240"],
                            "step": [0, 160, 220, 240], "accuracy": [0.9, 0.5, 0.85, 0.7],
                            "final_gold_prob": [0.8, 0.4, 0.8, 0.6], "kl_base": [0, 2, 0.5, 1.5],
                            "kl_prev": [0, 1, 1, 1], "share_detrimental": [0, 0.2, 0.05, 0.1],
                            "share_beneficial": [0, 0.01, 0.02, 0.02]})
    fig = charts.summary_over_steps(summary, None, run_branches([str(fake_run(tmp_path))]))
    lines = [t for t in fig.data if not (t.name or "").startswith("CPO run")]
    assert all(220 not in list(t.x) for t in lines)  # the RFT curves skip the run
    runs = [t for t in fig.data if (t.name or "").startswith("CPO run fix-1 (from checkpoint-160")]
    assert runs and all(list(t.x) == [160.0, 160.0] for t in runs)
    acc = runs[0]
    assert list(acc.y) == [0.5, 0.85]  # from the start's accuracy to the run's


def _lora_run(quick_world, root, name, seed, step, run_steps, init_adapter):
    """A CPO run's folder as core.cpo.runs writes it: ``<run>/adapter`` (random LoRA weights) with the trainer
    state's ``run_steps`` and the run's ``config.json`` naming the adapter it started from."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(quick_world / "model")
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    adapter = root / "runs" / "cpo" / name / "adapter"
    peft.save_pretrained(adapter, save_embedding_layers=False)
    (adapter / "trainer_state.json").write_text(json.dumps({"global_step": step, "run_steps": run_steps}))
    (adapter.parent / "config.json").write_text(json.dumps({"init_adapter": str(init_adapter) if init_adapter else ""}))
    return adapter


def test_series_parents_measure_a_branch_against_its_start_and_skip_it_on_the_rft_line():
    from core.models.branches import series_parents

    names = ["base", "ck-2", "fixA", "ck-4", "fixB", "fixC", "fixD"]
    starts = {"fixA": "base", "fixB": "ck-2", "fixC": "fixB", "fixD": "nowhere"}
    assert series_parents(names, starts) == {"ck-2": "base", "fixA": "base", "ck-4": "ck-2", "fixB": "ck-2",
                                             "fixC": "fixB", "fixD": "base"}
    assert series_parents(["base", "a", "b"], {}) == {"a": "base", "b": "a"}  # a plain series: i-1


def test_a_scored_branch_kl_prev_is_kl_to_its_start(quick_world, adapters, tmp_path):
    """Series [base, ck-2, fixA (from base), ck-4, fixB (from ck-2)] in that order: fixB's kl_prev / js_prev equal
    KL / JS(fixB || ck-2) from whole distributions, fixA's its KL to base, and ck-4's is to ck-2, not fixA."""
    import numpy as np
    import torch

    from core.drift.scoring import ScoreConfig, js, kl, score
    from core.io.trajectories import encode, read_jsonl
    from core.models.series import load_series

    fix_a = _lora_run(quick_world, tmp_path, "fixA", 7, 3, 3, None)
    fix_b = _lora_run(quick_world, tmp_path, "fixB", 8, 5, 3, adapters / "checkpoint-2")
    series = load_series(quick_world / "model", [adapters / "checkpoint-2", fix_a, adapters / "checkpoint-4", fix_b],
                         base_names=["cxr-demo-tiny-llama"])
    assert series.names == ["base", "checkpoint-2", "fixA", "checkpoint-4", "fixB"]
    assert series.parents == {"checkpoint-2": "base", "fixA": "base", "checkpoint-4": "checkpoint-2",
                              "fixB": "checkpoint-2"}
    enc = encode(series.tokenizer, read_jsonl(quick_world / "data" / "test.jsonl", limit=3))
    df = score(series, enc, ScoreConfig(top_k=0, batch_size=2))
    e = enc[0]
    lps = {}
    for name in series.names:
        with torch.no_grad(), series.activate(name) as m:
            lps[name] = torch.log_softmax(m(torch.tensor([e.input_ids])).logits[0].float(), -1)[e.start - 1: -1]
    for name, parent in series.parents.items():
        rows = df[(df.traj_id == e.id) & (df.checkpoint == name)]
        np.testing.assert_allclose(rows["kl_prev"], kl(lps[name], lps[parent]), atol=2e-5, err_msg=name)
        np.testing.assert_allclose(rows["js_prev"], js(lps[name], lps[parent]), atol=2e-5, err_msg=name)
    ck4 = df[(df.traj_id == e.id) & (df.checkpoint == "checkpoint-4")]["kl_prev"].to_numpy()
    assert not np.allclose(ck4, kl(lps["checkpoint-4"], lps["fixA"]).numpy(), atol=1e-3)  # the test can fail


def test_step_changes_never_compare_an_rft_step_with_a_run_branched_earlier():
    """RFT line base -> ck-160 -> ck-240 with a run 'fix' (joined at step 220) from ck-160: the step tests pair
    ck-240 with ck-160 and fix with its start; Page-Hinkley watches the RFT line only."""
    from core.drift import findings as drift

    golds = {"base": 0.9, "ck-160": 0.5, "fix": 0.9, "ck-240": 0.2}
    steps = {"base": 0, "ck-160": 160, "fix": 220, "ck-240": 240}
    beliefs = pd.DataFrame([{"traj_id": f"t{i}", "checkpoint": c, "step": steps[c], "position": 3,
                             "gold_prob": g + 0.01 * i, "answer": "Edema", "gold": "Edema"}
                            for i in range(8) for c, g in golds.items()])
    plain = drift.step_changes(beliefs, n_permutations=200)
    assert ("fix", "ck-240") in set(zip(plain["from_checkpoint"], plain["to_checkpoint"], strict=True))  # the old mistake
    df = drift.step_changes(beliefs, n_permutations=200, branches={"fix": "ck-160"})
    pairs = dict(zip(df["to_checkpoint"], df["from_checkpoint"], strict=True))
    assert pairs == {"ck-160": "base", "fix": "ck-160", "ck-240": "ck-160"}
    assert df.set_index("to_checkpoint").at["fix", "branch"]
    assert df.set_index("to_checkpoint").at["ck-240", "mean_change"] < 0 < df.set_index("to_checkpoint").at["fix", "mean_change"]
    assert not df[df["branch"]]["page_hinkley_alarm"].any()


def test_perturbation_charts_draw_a_run_beside_its_start_not_on_the_step_axis(tmp_path):
    branches = run_branches([str(fake_run(tmp_path))])  # fix-1 from checkpoint-160, joined as step 220
    summary = pd.DataFrame({"checkpoint": ["base", "checkpoint-160", "fix-1", "checkpoint-240"],
                            "step": [0, 160, 220, 240], "accuracy_before": [0.9, 0.5, 0.8, 0.6],
                            "accuracy_after": [0.9, 0.3, 0.8, 0.2], "flip_rate": [0.0, 0.4, 0.05, 0.5]})
    fig = charts.perturbation_over_steps(summary, branches)
    curves = [t for t in fig.data if not (t.name or "").startswith("CPO run")]
    assert len(curves) == 3 and all(list(t.x) == [0, 160, 240] for t in curves)
    runs = [t for t in fig.data if (t.name or "").startswith("CPO run fix-1 (from checkpoint-160")]
    assert len(runs) == 3 and all(list(t.x) == [160.0, 160.0] for t in runs)
    assert [list(t.y) for t in runs] == [[0.5, 0.8], [0.3, 0.8], [0.4, 0.05]]  # start -> run
    plain = charts.perturbation_over_steps(summary)  # without branches: the old axis, the run at 220
    assert 220 in list(plain.data[0].x)

    cats = pd.DataFrame({"gold": ["A"] * 4, "checkpoint": summary["checkpoint"], "step": summary["step"],
                         "flip_rate": [0.0, 0.4, 0.05, 0.5]})
    heat = charts.category_flip_heatmap(cats, branches=branches)
    assert list(heat.data[0].x) == ["base", "checkpoint-160", "↳ fix-1 (CPO from checkpoint-160)", "checkpoint-240"]
    one = pd.DataFrame({"checkpoint": summary["checkpoint"], "step": summary["step"],
                        "gold_before": [0.9, 0.5, 0.8, 0.6], "gold_after": [0.9, 0.1, 0.8, 0.2],
                        "answer_before": ["A"] * 4, "answer_after": ["A", "B", "A", "B"],
                        "flip": [False, True, False, True]})
    bars = charts.perturbation_beliefs(one.iloc[[0, 1, 3, 2]], branches)  # any row order: runs beside their start
    assert list(bars.data[0].x) == list(heat.data[0].x) and list(bars.data[1].y) == [0.9, 0.1, 0.8, 0.2]
    assert list(bars.data[2].x) == ["checkpoint-160", "checkpoint-240"]


def test_the_summary_chart_never_shades_a_run_against_its_start(tmp_path):
    summary = pd.DataFrame({"checkpoint": ["base", "checkpoint-160", "fix-1", "checkpoint-240"],
                            "step": [0, 160, 240, 240], "accuracy": [0.9, 0.5, 0.3, 0.7],
                            "final_gold_prob": [0.8, 0.4, 0.2, 0.6], "kl_base": [0, 2, 0.5, 1.5]})
    changes = pd.DataFrame({"from_checkpoint": ["base", "checkpoint-160", "checkpoint-160"],
                            "to_checkpoint": ["checkpoint-160", "fix-1", "checkpoint-240"],
                            "from_step": [0, 160, 160], "to_step": [160, 240, 240], "changed": [False, True, False],
                            "direction": ["detrimental"] * 3, "page_hinkley_alarm": [False] * 3,
                            "branch": [False, True, False]})
    fig = charts.summary_over_steps(summary, changes, run_branches([str(fake_run(tmp_path, steps=80))]))
    assert not [s for s in fig.layout.shapes if s.type == "rect"]  # the run got worse: not a stretch of the RFT axis


def test_one_trajectory_start_vs_repaired_beliefs_and_per_token_drift():
    from core.models.branches import compare, measured_from_start, trajectory_pair

    tokens = pd.DataFrame([{"traj_id": "a", "checkpoint": c, "position": p, "token": t, "logprob": lp,
                            "in_think": True, "kl_base": 0.1, "kl_prev": kp}
                           for c, p, t, lp, kp in [("ck", 0, " opacity", -1.0, 0.3), ("ck", 1, " Lung", -0.5, 0.2),
                                                   ("ck-240", 0, " opacity", -9.0, 9.0),
                                                   ("fix", 1, " Lung", -3.0, 0.7), ("fix", 0, " opacity", -1.5, 0.4)]])
    beliefs = pd.DataFrame([{"traj_id": "a", "checkpoint": c, "position": p, "answer": ans, "gold": "Edema",
                             "gold_prob": g} for c, p, ans, g in [("ck", -1, "Edema", 0.5), ("ck", 1, "Lung Opacity", 0.2),
                                                                  ("fix", 1, "Edema", 0.7), ("fix", -1, "Edema", 0.5)]])
    pair = trajectory_pair(tokens, beliefs, "ck", "fix", from_start=True)
    assert pair.beliefs["position"].tolist() == [-1, 1]
    assert pair.beliefs[["gold_prob_start", "gold_prob_repaired"]].values.tolist() == [[0.5, 0.5], [0.2, 0.7]]
    assert pair.tokens["kl_to_start"].tolist() == [0.4, 0.7]  # the run's own kl_prev: measured from its start
    assert pair.tokens["logprob_change"].round(3).tolist() == [-0.5, -2.5]
    assert trajectory_pair(tokens, beliefs, "ck", "fix").tokens["kl_to_start"].isna().all()  # older analyses
    fig = charts.start_vs_repaired(pair, "ck", "fix")
    names = [t.name for t in fig.data]
    assert names[:2] == ["start: ck", "repaired: fix"] and "KL(repaired ‖ start)" in names
    assert list(fig.data[2].y) == [0.4, 0.7]
    old = charts.start_vs_repaired(trajectory_pair(tokens, beliefs, "ck", "fix"), "ck", "fix")
    assert "KL(repaired ‖ start)" not in [t.name for t in old.data]

    cmp = compare(tokens, beliefs, "ck", "fix", from_start=True)
    assert cmp.summary["kl_to_start"].round(3).tolist() == [0.0, 0.55]
    assert measured_from_start(pd.DataFrame({"branch": [False, True]}))
    assert not measured_from_start(pd.DataFrame({"to_checkpoint": ["x"]}))


def test_category_heatmap_puts_a_run_beside_its_start(tmp_path):
    branches = run_branches([str(fake_run(tmp_path))])
    table = pd.DataFrame([[0.9, 0.5, 0.6, 0.8, 0.4]], index=["Edema"],
                         columns=["base", "checkpoint-160", "checkpoint-200", "fix-1", "checkpoint-240"])
    fig = charts.category_heatmap(table, branches)
    assert list(fig.data[0].x) == ["base", "checkpoint-160", "↳ fix-1 (CPO from checkpoint-160)", "checkpoint-200",
                                   "checkpoint-240"]
    assert list(fig.data[0].z[0]) == [0.9, 0.5, 0.8, 0.6, 0.4]
    assert list(charts.category_heatmap(table).data[0].x) == list(table.columns)  # no runs: as given


def test_an_analysis_of_a_series_with_a_run_measures_the_run_from_its_start(quick_world, adapters, tmp_path):
    """run_analysis end to end: the step tests pair the run with its start and checkpoint-4 with checkpoint-2;
    the run's kl_prev differs from what the series order alone would give (checkpoint-4)."""
    from core.drift.analysis import AnalysisConfig, run_analysis

    fix = _lora_run(quick_world, tmp_path, "fixB", 8, 5, 3, adapters / "checkpoint-2")
    cfg = AnalysisConfig(base=str(quick_world / "model"), data=str(quick_world / "data" / "test.jsonl"),
                         checkpoints=[str(adapters / "checkpoint-2"), str(adapters / "checkpoint-4"), str(fix)],
                         limit=2, positions="end", top_k=0, base_names=["cxr-demo-tiny-llama"])
    result = run_analysis(cfg, cache_dir=tmp_path / "cache")
    pairs = dict(zip(result.changes["to_checkpoint"], result.changes["from_checkpoint"], strict=True))
    assert pairs == {"checkpoint-2": "base", "checkpoint-4": "checkpoint-2", "fixB": "checkpoint-2"}
    assert result.changes.set_index("to_checkpoint")["branch"].to_dict() == {
        "checkpoint-2": False, "checkpoint-4": False, "fixB": True}
    kl = result.tokens.groupby("checkpoint")["kl_prev"].mean()
    assert kl["fixB"] > 0 and abs(kl["fixB"] - kl["checkpoint-4"]) > 1e-4


def test_the_token_heatmap_and_belief_lines_draw_a_run_below_its_start_labelled_as_a_run(tmp_path):
    """The series order puts a joined run after checkpoint-200 (its join step); both trajectory figures list it
    right after its start, named as a CPO run, never as a step between two RFT checkpoints."""
    import numpy as np

    from core.drift.explore import TokenMatrix

    branches = run_branches([str(fake_run(tmp_path))])  # fix-1 from checkpoint-160
    names = ["base", "checkpoint-160", "checkpoint-200", "fix-1", "checkpoint-240"]
    values = np.arange(10, dtype=float).reshape(5, 2)
    direction = np.array([["", ""], ["", ""], ["", ""], ["detrimental", ""], ["", ""]], dtype=object)
    m = TokenMatrix("kl_base", names, [0, 1], [" a", " b"], values, None, direction)
    heat = charts.token_heatmap(m, branches=branches)
    run_row = "↳ fix-1 (CPO from checkpoint-160)"
    assert list(heat.data[0].y) == ["base", "checkpoint-160", run_row, "checkpoint-200", "checkpoint-240"]
    assert list(heat.data[0].z[2]) == [6.0, 7.0]  # the run's values moved with its row
    assert list(heat.data[1].y) == [run_row]  # and its ▼ mark

    path = pd.DataFrame([{"checkpoint": c, "position": p, "gold_prob": 0.5, "answer": "A", "gold": "A"}
                         for c in names for p in (0, 1)])
    lines = charts.belief_lines(path, branches=branches)
    assert [t.name for t in lines.data] == ["base", "checkpoint-160", run_row, "checkpoint-200", "checkpoint-240"]
    assert lines.data[2].line.dash == "dash" and lines.data[2].line.color == charts.BRANCH_COLOR
