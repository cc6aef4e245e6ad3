"""CPO runs as branches of their start checkpoint, and the start vs repaired comparison."""

import json

import pandas as pd

from core.branches import branch_of, compare, run_branches
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
