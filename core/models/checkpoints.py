"""Find an ordered series of checkpoints in local folders.

Recognises trainer output folders (``checkpoint-N/`` as written by TRL, HF Trainer and ms-swift, also
nested one level like ms-swift's ``v0-2025.../checkpoint-N``) holding a PEFT adapter
(``adapter_config.json``) or a full model (``config.json``, sharded weights included); ms-swift's merged full
checkpoints (``checkpoint-660-merged``) join the series at their step. A folder that is itself a checkpoint
(a lone adapter or model folder) is a series of one. Steps come from ``trainer_state.json`` (``global_step``)
or else the folder name; the trainer's logged metrics at that step come along, and ``training`` says how it
was trained (objective, LoRA rank, learning rate, loss, reward) from ``trainer_state.json``, ms-swift's
``args.json`` (in the checkpoint or its run folder) and ``adapter_config.json``.

    series = discover("sample_data/rft")   # [CheckpointInfo(step=40, kind="adapter", ...), ...]
    series[0].training                     # {"objective": "grpo", "lora_rank": 8, "lr": 7e-4, "loss": ..., "reward": ...}
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InputError
from core.io.paths import expand
from core.models.resume import read_trainer_state

_STEP_RE = re.compile(r"checkpoint-(\d+)(?:-merged)?$")


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    kind: str  # "adapter" | "full"
    metrics: dict = field(default_factory=dict, compare=False)  # last logged values at this step
    training: dict = field(default_factory=dict, compare=False)  # objective, lora_rank, lr, loss, reward (if known)

    @property
    def name(self) -> str:
        return self.path.name


def checkpoint_kind(path: Path) -> str | None:
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file():
        return "full"
    return None


def _trainer_metrics(path: Path) -> tuple[int | None, dict]:
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        return None, {}
    step, history = read_trainer_state(state_file)  # wrong types: InputError naming the file and field
    metrics: dict = {}
    for entry in history:  # later entries win: the values logged last at this step
        if step is None or entry.get("step", step) <= step:
            metrics.update({k: v for k, v in entry.items() if isinstance(v, (int, float)) and k != "step"})
    return (int(step) if step is not None else None), metrics


def read_checkpoint(path: Path) -> CheckpointInfo:
    kind = checkpoint_kind(path)
    if kind is None:
        raise InputError(f"{path}: not a checkpoint (expected adapter_config.json or config.json)")
    step, metrics = _trainer_metrics(path)
    if step is None:
        m = _STEP_RE.search(path.name)
        step = int(m.group(1)) if m else 0
    return CheckpointInfo(path=path, step=step, kind=kind, metrics=metrics, training=training_summary(path, metrics))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


PREFERENCE_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")  # TRL DPO / CPO


def _objective_from_log(metrics: dict) -> str | None:
    """TRL writes no args.json: its logged keys say which kind of trainer wrote the checkpoint (a preference
    trainer's implicit rewards, any of them, are not an RL reward)."""
    if any(k in metrics for k in PREFERENCE_KEYS):
        return "preference (DPO / CPO)"
    if "reward" in metrics or any(k.startswith("rewards/") for k in metrics):
        return "RL (GRPO / PPO)"
    if "mean_token_accuracy" in metrics:
        return "sft"
    return None


def training_summary(path: Path, metrics: dict) -> dict:
    """How a checkpoint was trained, as far as its files say: ms-swift's ``args.json`` (here or in the run
    folder above), the adapter's LoRA config and the trainer's last logged loss / reward / lr."""
    args = _read_json(path / "args.json") or _read_json(path.parent / "args.json")
    adapter = _read_json(path / "adapter_config.json")
    # an RL trainer's reward; a preference trainer logs implicit rewards instead: its share of pairs ranked right
    reward = next((metrics[k] for k in ("reward", "rewards/accuracy_reward") if k in metrics), None)
    out = {"objective": args.get("rlhf_type") or ("sft" if args else None) or _objective_from_log(metrics),
           "train_type": args.get("train_type") or ("lora" if adapter else None),
           "lora_rank": args.get("lora_rank") or adapter.get("r"),
           "lr": args.get("learning_rate") or metrics.get("learning_rate"),
           "loss": metrics.get("loss", metrics.get("train_loss")), "reward": reward,
           "preference_accuracy": metrics.get("rewards/accuracies"),
           "trained_from": args.get("model") or adapter.get("base_model_name_or_path")}
    return {k: v for k, v in out.items() if v is not None}


def discover(root: str | Path) -> list[CheckpointInfo]:
    """All ``checkpoint-N`` (and ``checkpoint-N-merged``) folders under ``root`` (depth <= 2), ordered by
    step; ``root`` itself when it is a checkpoint (a lone adapter or model folder)."""
    root = expand(root)
    if not root.is_dir():
        raise InputError(f"{root}: checkpoint folder not found")
    found = _distinct([p for p in list(root.glob("checkpoint-*")) + list(root.glob("*/checkpoint-*"))
                       if p.is_dir() and _STEP_RE.search(p.name)])
    if not found and checkpoint_kind(root):
        lone = read_checkpoint(root)  # a series of one; step 0 is the base's
        return [lone if lone.step else CheckpointInfo(lone.path, 1, lone.kind, lone.metrics, lone.training)]
    if not found:
        raise InputError(f"{root}: no checkpoint-N/ folders found (expected a trainer output folder, "
                         "or one adapter or model folder)")
    complete = [p for p in found if checkpoint_kind(p)]
    if not complete:  # name the first offender
        read_checkpoint(sorted(found)[0])
    for p in sorted(set(found) - set(complete)):  # e.g. a trainer still writing its latest checkpoint
        warnings.warn(f"{p}: skipped, not a complete checkpoint (no adapter_config.json or config.json)", stacklevel=2)
    return sorted((read_checkpoint(p) for p in complete), key=lambda c: (c.step, str(c.path)))


def _distinct(paths: list[Path]) -> list[Path]:
    """One path per real folder: a symlink (a loop such as ``run/latest -> .``) does not list a checkpoint twice.
    The shortest path to a folder is kept."""
    by_target: dict[Path, Path] = {}
    for p in sorted(paths, key=lambda p: (len(p.parts), str(p))):
        by_target.setdefault(p.resolve(), p)
    return list(by_target.values())


def resolve(paths: str | Path | list[str | Path]) -> list[CheckpointInfo]:
    """A series from one folder (``discover``) or an explicit ordered list, each entry a checkpoint folder or a
    trainer output folder (its checkpoints by step); list entries without any step information get their rank."""
    import dataclasses

    if isinstance(paths, (str, Path)):
        return discover(paths)
    infos = [c for p in map(Path, paths)
             for c in (discover(p) if p.is_dir() and not checkpoint_kind(p) else [read_checkpoint(p)])]
    return [c if c.step or (c.path / "trainer_state.json").is_file() else dataclasses.replace(c, step=i + 1)
            for i, c in enumerate(infos)]


def check_model_dir(path: str | Path) -> Path:
    """``path`` as a base-model folder (config.json, weights, tokenizer), or an ``InputError`` saying why not."""
    path = expand(path)
    if not str(path).strip() or not path.exists():
        raise InputError(f"{path}: base model folder not found")
    if not path.is_dir():
        raise InputError(f"{path}: expected a model folder, found a file")
    if not (path / "config.json").is_file():
        hint = " (it looks like an adapter: pick its base model)" if (path / "adapter_config.json").is_file() else ""
        raise InputError(f"{path}: not a model folder, no config.json{hint}")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise InputError(f"{path}: no weights (*.safetensors or *.bin) in the model folder")
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise InputError(f"{path}: no tokenizer (tokenizer.json or tokenizer_config.json) in the model folder")
    return path


def find_candidates(roots: list[str | Path], max_depth: int = 3) -> tuple[list[Path], list[Path]]:
    """Under the data ``roots``: folders that hold a model (config.json + weights) and trainer output folders
    (holding checkpoint-N/), for the page's folder pickers. Hidden folders are skipped."""
    models, series = [], []
    for root in roots:
        root = expand(root)
        if not root.is_dir():
            continue
        frontier = [root]
        for _ in range(max_depth + 1):
            nxt = []
            for folder in frontier:
                try:
                    children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
                except OSError:
                    continue
                if (folder / "config.json").is_file() and not _STEP_RE.search(folder.name) and \
                        (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))):
                    models.append(folder)
                if any(_STEP_RE.search(c.name) for c in children):
                    series.append(folder)
                    continue  # do not list the checkpoints themselves as candidates
                nxt += children
            frontier = nxt
    return list(dict.fromkeys(models)), list(dict.fromkeys(series))
