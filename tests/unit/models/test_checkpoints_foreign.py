"""Checkpoints as the field writes them: a TRL run whose adapters name a base path that no longer exists,
the same adapters in ms-swift's layout with args.json and a merged (sharded, bf16) full checkpoint, a lone
folder, an explicit list."""

import json

import pytest
import torch

from core.models import checkpoints
from core.models.series import BASE, load_series


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits.float()


def test_trl_run_loads_with_a_warning_about_the_base_name(foreign_run):
    declared = json.loads((foreign_run["run"] / "checkpoint-2" / "adapter_config.json").read_text())
    assert "cluster/models/tiny-llama-base" in declared["base_model_name_or_path"]
    with pytest.warns(UserWarning, match="base_model_name_or_path .*tiny-llama-base"):
        s = load_series(foreign_run["base"], foreign_run["run"], device="cpu")
    assert s.names == [BASE, "checkpoint-2", "checkpoint-4"]
    assert len(s.warnings) == 1 and "2 adapters (checkpoint-2, checkpoint-4)" in s.warnings[0]  # once, not per adapter
    assert "loaded anyway" in s.warnings[0]
    # the name is a hint: once the user says it is the same model, nothing to warn about
    assert not load_series(foreign_run["base"], foreign_run["run"], device="cpu",
                           base_names=["tiny-llama-base"]).warnings


def test_trl_trainer_state_gives_step_loss_lr_and_kind_of_training(foreign_run):
    found = checkpoints.discover(foreign_run["run"])
    assert [c.step for c in found] == [2, 4]
    t = found[-1].training
    assert t["objective"] == "sft" and t["lora_rank"] == 4 and t["train_type"] == "lora"
    assert t["loss"] > 0 and t["lr"] > 0 and "tiny-llama-base" in t["trained_from"]


def test_ms_swift_layout_with_args_json_and_a_merged_sharded_bf16_checkpoint(foreign_run):
    found = checkpoints.discover(foreign_run["swift"])
    assert [(c.name, c.step, c.kind) for c in found] == [
        ("checkpoint-2", 2, "adapter"), ("checkpoint-4", 4, "adapter"), ("checkpoint-4-merged", 4, "full")]
    merged = found[-1]
    assert (merged.path / "model.safetensors.index.json").is_file()
    assert found[0].training["lr"] == 5e-3 and found[0].training["objective"] == "sft"
    with pytest.warns(UserWarning):
        s = load_series(foreign_run["base"], foreign_run["swift"], device="cpu")
    ids = [2, 10, 11, 12, 13]
    with s.activate("checkpoint-4") as m:
        adapter = _logits(m, ids)
    with s.activate("checkpoint-4-merged") as m:
        assert next(m.parameters()).dtype == torch.float32  # the series' dtype, from bf16 weights
        full = _logits(m, ids)
    assert torch.allclose(adapter, full, atol=0.05)  # the same weights, rounded to bf16 once


def test_a_lone_adapter_or_model_folder_is_a_series_of_one(foreign_run):
    lone = foreign_run["run"] / "checkpoint-4"
    assert [(c.name, c.step) for c in checkpoints.discover(lone)] == [("checkpoint-4", 4)]
    with pytest.warns(UserWarning):
        assert load_series(foreign_run["base"], lone, device="cpu").names == [BASE, "checkpoint-4"]
    merged = next(foreign_run["swift"].glob("*/checkpoint-4-merged"))
    assert [(c.kind, c.step) for c in checkpoints.discover(merged)] == [("full", 4)]


def test_explicit_list_keeps_its_order_and_expands_run_folders(foreign_run):
    run = foreign_run["run"]
    with pytest.warns(UserWarning):
        s = load_series(foreign_run["base"], [run / "checkpoint-4", run / "checkpoint-2"], device="cpu")
    assert s.names == [BASE, "checkpoint-4", "checkpoint-2"]
    with pytest.warns(UserWarning):
        s = load_series(foreign_run["base"], [str(run)], device="cpu")
    assert s.names == [BASE, "checkpoint-2", "checkpoint-4"]


def test_broken_args_json_is_named(tmp_path):
    ck = tmp_path / "v0" / "checkpoint-3"
    ck.mkdir(parents=True)
    (ck / "adapter_config.json").write_text("{}")
    (tmp_path / "v0" / "args.json").write_text("{oops")
    with pytest.raises(Exception, match="args.json: not valid JSON"):
        checkpoints.discover(tmp_path)


def test_a_preference_runs_log_is_called_so_and_shows_no_rl_reward(tmp_path):
    """A TRL DPO run logs implicit rewards: its checkpoints are a preference run, however few keys it logged
    (only rewards/accuracies), and its 'reward' is not rewards/chosen (issue 24)."""
    import json

    from core.models.checkpoints import read_checkpoint

    for name, logged in (("dpo", {"loss": 0.6, "rewards/chosen": -1.5, "rewards/rejected": -2.0,
                                  "rewards/margins": 0.5, "rewards/accuracies": 0.75}),
                         ("acc-only", {"loss": 0.6, "rewards/accuracies": 0.5}),
                         ("grpo", {"loss": 0.1, "reward": 0.4, "rewards/accuracy_reward": 0.4})):
        ck = tmp_path / name / "checkpoint-2"
        ck.mkdir(parents=True)
        (ck / "adapter_config.json").write_text(json.dumps({"r": 4, "base_model_name_or_path": "b"}))
        (ck / "adapter_model.safetensors").write_bytes(b"")
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": [{"step": 2, **logged}]}))
        info = read_checkpoint(ck)
        if name == "grpo":
            assert info.training["objective"] == "RL (GRPO / PPO)" and info.training["reward"] == 0.4
        else:
            assert info.training["objective"] == "preference (DPO / CPO)" and "reward" not in info.training
            assert info.training["preference_accuracy"] == logged["rewards/accuracies"]
