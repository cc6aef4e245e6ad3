"""A CPO run from an ms-swift run's merged full checkpoint (issue 24): the checkpoint is the run's base with a
new LoRA over it (pre-flight refused it as an ``init_adapter``, and the run failed 8 s after it started); the run
trains, is evaluated over that base, and its comparison names the merged checkpoint as its start."""

import json

from core.cpo import runs, train
from core.cpo.config import TrainConfig
from core.io.trajectories import read_trajectories
from core.workspace.world import create_world, load_world
from tests import foreign


def pairs_file(path, records):
    """TRL preference pairs of the run's own studies: the answer argued for another disease."""
    lines = []
    for r in records:
        other = next(d for d in sorted(foreign.DISEASES) if d != r["label"])
        lines.append({"prompt": r["prompt"], "chosen": r["completion"],
                      "rejected": r["completion"].replace(r["label"], other)})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_a_run_starts_from_a_merged_checkpoint_as_its_base(foreign_run, tmp_path):
    world = load_world(create_world(tmp_path / "swift-world", "swift-run", foreign_run["base"], [foreign_run["swift"]],
                                    [foreign_run["train"]], held_out=foreign_run["heldout"]).root)
    merged = next(c for c in world.checkpoints if c.kind == "full")
    base, adapter = runs.start_point(world, merged.name)
    assert (base, adapter) == (str(merged.path), None)
    assert runs.start_point(world, "checkpoint-2") == (str(world.base_model_dir), str(world.checkpoints[0].path))
    data = pairs_file(tmp_path / "pairs.jsonl", read_trajectories(foreign_run["train"], limit=8))
    wrong = TrainConfig(base_model=str(world.base_model_dir), data=str(data), output_dir=str(tmp_path / "no"),
                        init_adapter=str(merged.path), lora_r=4)
    assert any("not a LoRA adapter" in e for e in train.preflight(wrong).errors)  # refused before Launch
    cfg = TrainConfig(base_model=base, data=str(data), output_dir=str(tmp_path / "run"), max_steps=2, batch_size=4,
                      lora_r=4, lora_alpha=8, save_steps=2, base_names=[merged.name])
    assert not train.preflight(cfg).errors
    result = train.train(cfg)
    assert result.steps == 2 and (result.adapter_dir / "adapter_model.safetensors").is_file()
    evaluation = runs.evaluate_adapter(world.root, result.adapter_dir, limit=2, base=cfg.base_model)
    assert evaluation["studies"] == 2 and 0 <= evaluation["accuracy"] <= 1
    assert runs.start_name(world.root, cfg.to_dict()) == merged.name
    assert runs.start_name(world.root, {"base_model": str(world.base_model_dir)}) == "base (SFT)"


def test_the_command_shown_before_launch_works_before_the_run_exists(foreign_run, tmp_path):
    """The exact command of a run not launched yet writes its config.json first, then names it."""
    from core.jobs.registry import shell_command

    cfg = TrainConfig(base_model=str(foreign_run["base"]), data=str(tmp_path / "pairs.jsonl"),
                      output_dir=str(tmp_path / "runs" / "cpo" / "new"))
    text = shell_command(*runs.train_command(cfg, tmp_path / "world", 8))
    assert text.startswith("cat > config.json <<'EOF'\n") and json.loads(text.split("\n", 1)[1].split("\nEOF\n")[0])[
        "output_dir"] == cfg.output_dir
    assert "workbench train --config config.json --evaluate" in text and "--evaluate-limit 8" in text
    assert not (tmp_path / "runs").exists()  # nothing written by showing it
