"""The CPO trainer: losses against hand computation, weights, config, pre-flight, and real short runs on
the sample world's tiny model (train, cancel, resume, fail, the CLI's config path)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from core.cpo.config import TrainConfig
from core.cpo.train import (
    failure_message,
    preflight,
    random_negatives,
    read_pairs,
    train,
)
from core.cpo.trainer import (
    chosen_nll,
    cpo_losses,
    dpo_losses,
    normalise_weights,
    objective_loss,
)
from core.errors import InputError
from core.io.locks import lock_folder
from core.models import checkpoints
from core.models.series import load_series
from workbench import cli
from workbench.demo.preferences import build_preferences, sample_config

BASE_NAME = "cxr-demo-tiny-llama"


def _ls(x: float) -> float:  # -log sigmoid(x)
    return math.log1p(math.exp(-x))


def test_cpo_loss_matches_hand_computation():
    chosen, rejected = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    got = cpo_losses(chosen, rejected, beta=0.5)
    assert got.tolist() == pytest.approx([_ls(0.5 * 1.0), _ls(0.5 * -3.0)])
    per_token = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    nll = chosen_nll(per_token, mask)
    assert nll.item() == pytest.approx(3.5 / 3)
    total = objective_loss("cpo", got, torch.ones(2), nll, cpo_alpha=2.0)
    assert total.item() == pytest.approx((_ls(0.5) + _ls(-1.5)) / 2 + 2.0 * 3.5 / 3)
    assert objective_loss("sft", got, torch.ones(2), nll, 1.0).item() == pytest.approx(3.5 / 3)


def test_cpo_loss_equals_trls_cpo_trainer_loss():
    from types import SimpleNamespace

    from trl.experimental.cpo import CPOTrainer as TRLCPOTrainer

    chosen, rejected = torch.tensor([-3.0, -5.0, -1.0]), torch.tensor([-4.0, -2.0, -9.0])
    trl_self = SimpleNamespace(alpha=0.0, loss_type="sigmoid", beta=0.1, label_smoothing=0.0,
                               accelerator=SimpleNamespace(device="cpu"))
    theirs, their_chosen, _ = TRLCPOTrainer.cpo_loss(trl_self, chosen, rejected)
    assert torch.allclose(cpo_losses(chosen, rejected, beta=0.1), theirs)
    assert torch.allclose(0.1 * chosen, their_chosen)  # the rewards CPOTrainer logs are what we log too


def test_dpo_loss_with_weights_matches_hand_computation():
    c, r = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    losses = dpo_losses(c, r, rc, rr, beta=0.1)
    by_hand = [_ls(0.1 * ((-3 + 3.5) - (-4 + 3))), _ls(0.1 * ((-5 + 4) - (-2 + 3)))]
    assert losses.tolist() == pytest.approx(by_hand)
    w = torch.tensor([1.5, 0.5])
    assert objective_loss("cpo++", losses, w, torch.tensor(9.0), 1.0).item() == pytest.approx(
        (1.5 * by_hand[0] + 0.5 * by_hand[1]) / 2)


def test_weights_normalised_to_mean_one():
    assert normalise_weights([2.0, 1.0, 1.0, 4.0]) == pytest.approx([1.0, 0.5, 0.5, 2.0])
    assert sum(normalise_weights([0.3, 7.0, 1.1])) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="positive"):
        normalise_weights([1.0, 0.0])


def test_out_of_memory_is_named():
    assert failure_message(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")).startswith(
        "training ran out of memory (OutOfMemoryError: CUDA out of memory.")
    assert failure_message(ValueError("bad\nmore")) == "training failed: ValueError: bad"


def test_config_round_trip_and_bad_fields(tmp_path):
    cfg = TrainConfig(base_model="m", data="d.jsonl", output_dir="o", objective="cpo++", base_names=["x"])
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    (tmp_path / "bad.json").write_text(json.dumps({**json.loads((tmp_path / "c.json").read_text()), "beta": -1}))
    with pytest.raises(InputError, match="bad.json: field 'beta': expected a positive number"):
        TrainConfig.load(tmp_path / "bad.json")
    (tmp_path / "unk.json").write_text(json.dumps({"base_model": "m", "data": "d", "output_dir": "o", "lr": 1}))
    with pytest.raises(InputError, match="unknown field 'lr'"):
        TrainConfig.load(tmp_path / "unk.json")
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(base_model="m", data="d", output_dir="o", objective="ppo")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_preflight_flags_empty_identical_and_truncated(tmp_path, sample_world):
    base = str(sample_world / "model")
    empty = TrainConfig(base_model=base, data=str(_write(tmp_path / "e.jsonl", [])), output_dir=str(tmp_path))
    assert preflight(empty).errors == [f"{tmp_path / 'e.jsonl'}: no preference pairs (empty dataset)"]
    rows = [{"prompt": "Report: the chest radiograph shows opacity.", "chosen": "<think> a </think> X.",
             "rejected": "<think> a </think> X."},
            {"prompt": "Report: the chest radiograph shows opacity.", "chosen": "<think> " + "opacity " * 40 + "</think>",
             "rejected": "<think> b </think> Y."}]
    cfg = TrainConfig(base_model=base, data=str(_write(tmp_path / "p.jsonl", rows)), output_dir=str(tmp_path),
                      max_length=32)
    pre = preflight(cfg)
    assert (pre.pairs, pre.identical, pre.truncated, pre.errors) == (2, [0], [1], [])
    assert any("exceed max_length 32" in w for w in pre.warnings)
    assert any("identical chosen and rejected" in w for w in pre.warnings)


def test_bad_pair_line_is_named(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                         {"prompt": "a", "chosen": "b", "rejected": "c", "weight": -2}])
    with pytest.raises(InputError, match=r"p.jsonl, line 2, field 'weight': expected a positive finite number"):
        read_pairs(path)


def test_random_negatives_take_another_label(tmp_path, sample_world):
    pairs = read_pairs(build_preferences(sample_world, tmp_path / "p.jsonl", n=40, seed=1))
    neg = random_negatives(pairs, seed=3)
    chosen_label = {p["chosen"]: p["label"] for p in pairs}
    assert all(chosen_label[n["rejected"]] != p["label"] for p, n in zip(pairs, neg, strict=True))
    assert neg == random_negatives(pairs, seed=3) and neg != random_negatives(pairs, seed=4)
    # a pair with no label whose chosen side gives no readable answer ("Edema. It is mild" is malformed) could be any
    # label: drawn as another pair's negative it might be the same disease, so the draw is refused, naming it
    unread = [*pairs[:5], {**pairs[5], "label": None, "chosen": "<think> x </think> Edema. It is mild."}]
    with pytest.raises(InputError, match=r"negatives 'random': 1 of 6 pairs \(the first: pair 6\) have no label"):
        random_negatives(unread, seed=3)


def test_sample_config_is_the_default_run(tmp_path, sample_world):
    cfg = sample_config(sample_world, tmp_path / "run", objective="cpo++")
    assert (cfg.objective, cfg.max_steps, cfg.base_names) == ("cpo++", 60, [BASE_NAME])
    assert cfg.init_adapter.endswith("rft/checkpoint-160")
    pre = preflight(cfg)
    assert (pre.pairs, pre.sources, pre.errors, pre.truncated) == (480, ["confusable", "shortcut"], [], [])


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory, sample_world):
    return build_preferences(sample_world, tmp_path_factory.mktemp("pairs") / "pairs.jsonl", n=32, seed=0)


def _cfg(sample_world, pairs_file, out, **kw) -> TrainConfig:
    opts = dict(base_model=str(sample_world / "model"), data=str(pairs_file), output_dir=str(out),
                init_adapter=str(sample_world / "rft" / "checkpoint-160"), max_steps=3, batch_size=4,
                learning_rate=1e-3, save_steps=2, base_names=[BASE_NAME])
    return TrainConfig(**{**opts, **kw})


def test_training_changes_the_adapter_and_writes_a_loadable_run(tmp_path, sample_world, pairs_file):
    cfg = _cfg(sample_world, pairs_file, tmp_path / "run", objective="cpo++")
    result = train(cfg)
    assert (result.steps, result.cancelled) == (3, False)
    before = load_file(sample_world / "rft" / "checkpoint-160" / "adapter_model.safetensors")
    after = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 1e-4
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all({"loss", "rewards/margins", "rewards/accuracies", "loss/shortcut", "accuracy/confusable",
                "tokens_per_second", "gpu_memory_gb", "time"} <= set(r) for r in rows)
    assert all(r["accuracy/shortcut"] is None or 0 <= r["accuracy/shortcut"] <= 1 for r in rows)
    assert [c.step for c in checkpoints.discover(result.adapter_dir.parent)] == [2, 3]
    assert TrainConfig.load(tmp_path / "run" / "config.json") == cfg
    series = load_series(sample_world / "model", [result.adapter_dir], base_names=[BASE_NAME])
    assert series.steps[series.names[-1]] == 3


def test_cancel_saves_then_resume_continues(tmp_path, sample_world, pairs_file):
    out = tmp_path / "run"
    calls = []
    result = train(_cfg(sample_world, pairs_file, out, objective="cpo", max_steps=4, save_steps=10),
                   progress=lambda d, t, m: calls.append((d, t, m)), should_cancel=lambda: sum(m.startswith("step") for _, _, m in calls) >= 2)  # warnings come first
    assert (result.cancelled, result.steps) == (True, 2)
    assert [c.step for c in checkpoints.discover(out)] == [2]
    assert any(m == "step 2/4 loss" or m.startswith("step 2/4") for _, _, m in calls)
    # a worker killed at step 3 while saving: its metrics row for step 3 is written, its checkpoint is cut
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-3")
    (out / "checkpoint-3" / "trainer_state.json").unlink()
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 3, "loss": 9.0}) + "\n" + '{"step": 4, "lo')
    with lock_folder(out, "run folder"), pytest.raises(InputError, match="another process writes"):
        train(_cfg(sample_world, pairs_file, out, objective="cpo", max_steps=4, save_steps=10, resume=True))
    messages = []
    resumed = train(_cfg(sample_world, pairs_file, out, objective="cpo", max_steps=4, save_steps=10, resume=True),
                    progress=lambda d, t, m: messages.append(m))
    assert (resumed.cancelled, resumed.steps) == (False, 4)
    assert any("checkpoint-3 skipped" in m and "trainer_state.json is missing" in m for m in messages)
    rows = [json.loads(line) for line in resumed.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[2]["loss"] != 9.0  # replaced, not repeated


def test_cli_runs_a_config_and_reports_failures(tmp_path, sample_world, pairs_file, capsys):
    cfg = _cfg(sample_world, pairs_file, tmp_path / "run", objective="sft", max_steps=1)
    cfg.save(tmp_path / "run.json")
    assert cli.main(["train", "--config", str(tmp_path / "run.json")]) == 0
    assert "finished at step 1" in capsys.readouterr().out
    assert checkpoints.discover(tmp_path / "run")[-1].step == 1
    bad = _cfg(sample_world, pairs_file, tmp_path / "bad", lora_r=4)  # checkpoint-160 has r=8
    bad.save(tmp_path / "bad.json")
    assert cli.main(["train", "--config", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "adapter weights do not fit this LoRA config (r=4)" in err
    crash = _cfg(sample_world, pairs_file, tmp_path / "crash", objective="cpo", max_steps=2, save_steps=2,
                 learning_rate=1e39)  # the adapter blows up at the first step
    crash.save(tmp_path / "crash.json")
    assert cli.main(["train", "--config", str(tmp_path / "crash.json")]) == 1
    assert "error: training failed: NonFiniteError: step 1" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text('{"base_model": "m", "data": "d", "output_dir": "o", "max_steps": 0}')
    assert cli.main(["train", "--config", str(tmp_path / "broken.json")]) == 2
    assert "field 'max_steps': expected a positive integer" in capsys.readouterr().err


@pytest.mark.slow
def test_same_entry_point_under_accelerate_launch(tmp_path, sample_world, pairs_file):
    import subprocess
    import sys
    from pathlib import Path

    cfg = _cfg(sample_world, pairs_file, tmp_path / "run", objective="cpo", max_steps=1)
    cfg.save(tmp_path / "run.json")
    accelerate = Path(sys.executable).parent / "accelerate"
    done = subprocess.run([str(accelerate), "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "workbench.cli", "train",
                           "--config", str(tmp_path / "run.json")], capture_output=True, text=True, timeout=300,
                          env={"PATH": f"{accelerate.parent}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
                          cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finished at step 1" in done.stdout
    assert json.loads((tmp_path / "run" / "adapter" / "trainer_state.json").read_text())["global_step"] == 1


def test_a_run_from_an_adapter_starts_from_exactly_the_model_it_scores_as(tmp_path, sample_world, pairs_file):
    """A start adapter whose alpha is 64 (B halved: the same model as checkpoint-160): the trainer's model
    before its first step gives checkpoint-160's logits, not a half-strength update read at the config's alpha."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from core.cpo.train import build_trainer
    from core.models.series import load_series

    start = tmp_path / "start" / "checkpoint-160"
    shutil.copytree(sample_world / "rft" / "checkpoint-160", start)
    config = json.loads((start / "adapter_config.json").read_text())
    (start / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 2 * config["lora_alpha"]}))
    weights = load_file(start / "adapter_model.safetensors")
    save_file({k: v / 2 if "lora_B" in k else v for k, v in weights.items()}, start / "adapter_model.safetensors")
    trainer = build_trainer(_cfg(sample_world, pairs_file, tmp_path / "run", init_adapter=str(start)))
    series = load_series(sample_world / "model", sample_world / "rft" / "checkpoint-160", base_names=[BASE_NAME])
    ids = torch.tensor([[1, 5, 9, 12, 3, 40, 7]])
    with torch.no_grad(), series.activate("checkpoint-160") as model:
        expected = model(input_ids=ids).logits
    trainer.model.eval()
    with torch.no_grad():
        got = trainer.model(input_ids=ids).logits
    assert trainer.model.peft_config["default"].lora_alpha == 2 * config["lora_alpha"]
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_output_dir_holding_the_users_files_is_refused_untouched(tmp_path, sample_world, pairs_file, capsys):
    """The rule of ``--out``: train writes a new run only into a new or empty folder, or one holding only
    its own config (as the runs page writes it)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    files = {"config.json": '{"my": "settings"}', "README.md": "# my notes", "metrics.jsonl": '{"step": 1}\n'}
    for name, text in files.items():
        (mine / name).write_text(text)
    cfg = _cfg(sample_world, pairs_file, mine, objective="sft", max_steps=1)
    cfg.save(tmp_path / "run.json")
    assert cli.main(["train", "--config", str(tmp_path / "run.json")]) == 2
    assert f"{mine}: output_dir holds files (README.md, config.json, metrics.jsonl)" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in mine.iterdir()} == files
    own = _cfg(sample_world, pairs_file, tmp_path / "own", objective="sft", max_steps=1)
    (tmp_path / "own").mkdir()
    own.save(tmp_path / "own" / "config.json")  # what the runs page writes before the job
    assert cli.main(["train", "--config", str(tmp_path / "own" / "config.json")]) == 0
