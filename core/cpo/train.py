"""Counterfactual Preference Optimization runs: one typed config, a pre-flight check, and ``train``.

    cfg = TrainConfig(base_model="sample_data/model", data="pairs.jsonl", output_dir="runs/cpo-1",
                      init_adapter="sample_data/rft/checkpoint-160", base_names=["cxr-demo-tiny-llama"])
    preflight(cfg).warnings        # pairs whose reasoning max_length would cut, identical chosen/rejected
    result = train(cfg, progress=lambda done, total, msg: ..., should_cancel=lambda: False)
    result.adapter_dir             # runs/cpo-1/adapter: a LoRA adapter core.models.series loads as a new checkpoint

The same run from a shell, on one GPU or several (``accelerate launch`` for multi-GPU and DeepSpeed):
``workbench train --config run.json`` or ``accelerate launch -m core.jobs.worker train --config run.json``.

A run folder holds ``config.json`` (this TrainConfig), ``metrics.jsonl`` (one object per logging step),
``checkpoint-N/`` (adapter + trainer_state.json + optimizer, as HF Trainer writes them) and ``adapter/``.
The objectives live in ``core.cpo.trainer``; data is TRL preference JSONL (prompt, chosen, rejected,
optional source and weight). The base model's family (``core.models.families``, chosen once from its
``config.json``) loads it and its processor, encodes the pairs (text: BOS + prompt, " " + completion + EOS;
Qwen-VL: chat-templated prompts with their image tokens), collates the batches and names the LoRA targets and
the frozen modules (Qwen-VL: the language model's linear layers, the vision tower frozen); ``source_weights``
gives a source its own CPO++ weight, e.g. ``{"image_swap": 0.5}`` for the visual pairs (same CoT,
counterfactual image).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.cpo.config import TrainConfig
from core.errors import InputError
from core.io.pairs import read_pairs  # the one reader of preference pairs
from core.io.roots import check_data_path
from core.io.locks import lock_folder
from core.models.vision import VisionConfig

if TYPE_CHECKING:
    from core.models.families import Family


@dataclass
class Preflight:
    pairs: int
    truncated: list[int]  # indices of pairs longer than max_length (their reasoning or answer would be cut)
    identical: list[int]  # indices of pairs whose chosen equals rejected (no preference signal; dropped)
    warnings: list[str]
    errors: list[str]
    sources: list[str] = field(default_factory=list)
    # what was read and tokenized, kept for tokenized_dataset (the data is read and tokenized once per run)
    records: list[dict] = field(default_factory=list, repr=False, compare=False)
    encoded: list[dict] = field(default_factory=list, repr=False, compare=False)


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    cancelled: bool
    metrics_path: Path


# ---------------------------------------------------------------- data

def random_negatives(pairs: list[dict], seed: int) -> list[dict]:
    """The paper's "DPO with random negatives": each rejected becomes the chosen of a random other pair with
    another label (from ``label``, else the chosen's answer), drawn with ``seed``; read under the pair's own
    images (a random *text* negative: a visual pair's counterfactual image is not kept)."""
    from core.counterfactuals.rewrite import answer_of

    rng = random.Random(seed)
    labels = [p["label"] or answer_of(p["chosen"]) for p in pairs]
    unread = [i for i, lab in enumerate(labels) if lab is None]
    if unread:  # one unknown answer could be any label: drawn as another's negative, it might be the same disease
        raise InputError(f"negatives 'random': {len(unread)} of {len(pairs)} pairs (the first: pair {unread[0] + 1}) "
                         "have no label field and no answer that can be read at the end of their chosen side; "
                         "expected a label for every pair to draw a negative of another label")
    others = {lab: [j for j, other in enumerate(labels) if other != lab] for lab in dict.fromkeys(labels)}  # per label
    if len(others) < 2:
        raise InputError("negatives 'random': every pair has the same label, so no negative of another label exists")
    return [{**p, "rejected": pairs[rng.choice(others[lab])]["chosen"], "rejected_images": list(p.get("images", []))}
            for p, lab in zip(pairs, labels, strict=True)]


def _pairs_of(cfg: TrainConfig) -> list[dict]:
    roots = None if cfg.image_roots is None else [Path(r) for r in cfg.image_roots]
    if roots is not None:  # a run launched from the UI: its data file, like its images, under the data roots
        check_data_path(cfg.data, roots)
    pairs = read_pairs(cfg.data, roots=roots)
    return random_negatives(pairs, cfg.seed) if cfg.negatives == "random" and pairs else pairs


MIN_PAIRS = 64  # below this a run mostly memorises its pairs (the sample world's default set has 480)
MIN_PAIRS_PER_SOURCE = 8  # CPO++ weights and reports each source: a handful of pairs makes both noise
_ANSWER = re.compile(r"\bis ([^.\n]+)\.?\s*$")


def pair_label(pair: dict) -> str:
    """The answer a pair's chosen side gives: its ``label`` field, else the text after ``</think>``
    ("The disease of this patient is X." -> "X"), else the chosen side's last line."""
    if pair.get("label"):
        return str(pair["label"])
    answer = pair["chosen"].rsplit("</think>", 1)[-1].strip().splitlines()
    answer = answer[-1].strip() if answer else ""
    found = _ANSWER.search(answer)
    return (found.group(1) if found else answer)[:60] or "(no answer)"


def balance_warnings(pairs: list[dict]) -> list[str]:
    """Tiny or unbalanced data, said before the run: too few pairs, one answer label holding most of them,
    sources with a handful of pairs."""
    from collections import Counter

    n, out = len(pairs), []
    if n < MIN_PAIRS:
        out.append(f"only {n} pairs (fewer than {MIN_PAIRS}): a run on so few pairs can leave the model worse "
                   "than its start on the held-out sets; curate and export more pairs (generate counterfactuals over "
                   "more of the world's trajectories)")  # the engine knows no world's own preference set
    labels = Counter(pair_label(p) for p in pairs)
    top, count = labels.most_common(1)[0]
    if n >= 2 and (len(labels) == 1 or count / n > 0.5):
        out.append(f"unbalanced answers: {count} of {n} pairs ({count / n:.0%}) answer {top!r} "
                   f"({len(labels)} label{'s' if len(labels) != 1 else ''} in all); the run may learn to answer it")
    sources = Counter(p["source"] for p in pairs)
    thin = sorted(s for s, c in sources.items() if c < MIN_PAIRS_PER_SOURCE)
    if len(sources) > 1 and thin:
        out.append("few pairs per source: " + ", ".join(f"{s!r} {sources[s]}" for s in thin)
                   + f" (fewer than {MIN_PAIRS_PER_SOURCE}); their weights and per-source metrics rest on these")
    return out


def family_of(cfg: TrainConfig) -> Family:
    """The base model's family (``core.models.families.family_for``; an unsupported one is refused by name)."""
    from core.models.families import family_for  # torch: this module stays light for the pages

    return family_for(cfg.base_model)


def processing(cfg: TrainConfig):
    """What encodes the run's pairs: the family's processor (a text base's tokenizer, a VL base's processor
    with the run's pixel limits)."""
    return family_of(cfg).load_processor(cfg.base_model, VisionConfig.of(cfg))


def _row_length(e: dict) -> int:
    """The longer of a pair's two rows (a VL pair's sides may have prompts of different lengths)."""
    return max(len(e["prompt_ids"]) + len(e["chosen_ids"]),
               len(e.get("rejected_prompt_ids", e["prompt_ids"])) + len(e["rejected_ids"]))


def preflight(cfg: TrainConfig, tokenizer=None) -> Preflight:
    """Check the data before the first step: empty, identical chosen/rejected, lengths against max_length,
    images (each named when missing or unreadable; on a text base, pairs with images are refused)."""
    pairs = _pairs_of(cfg)
    if not pairs:
        return Preflight(0, [], [], [], [f"{cfg.data}: no preference pairs (empty dataset)"])
    if cfg.init_adapter and not (Path(cfg.init_adapter) / "adapter_model.safetensors").is_file():
        return Preflight(len(pairs), [], [], [], [
            f"{cfg.init_adapter}: not a LoRA adapter (no adapter_model.safetensors); a merged full checkpoint is "
            "started from as the base model (base_model = that folder, no init_adapter): a new LoRA over it"])
    enc, errors = family_of(cfg).encode_pairs(tokenizer or processing(cfg), pairs, cfg.max_length, str(cfg.data),
                                              str(cfg.base_model))
    if errors:
        return Preflight(len(pairs), [], [], [], errors)
    identical = [i for i, p in enumerate(pairs)
                 if p["chosen"].strip() == p["rejected"].strip() and p.get("images") == p.get("rejected_images")]
    truncated = [i for i, e in enumerate(enc) if _row_length(e) > cfg.max_length]
    warnings = []
    if truncated:
        longest = max(_row_length(e) for e in enc)
        warnings.append(f"{len(truncated)} of {len(pairs)} pairs exceed max_length {cfg.max_length} tokens "
                        f"(longest {longest}; first: pair {truncated[0] + 1}): their reasoning or answer is cut")
    if identical:
        warnings.append(f"{len(identical)} pairs have identical chosen and rejected (first: pair {identical[0] + 1}); "
                        "they carry no preference and are left out")
    warnings += balance_warnings(pairs)
    if len(identical) == len(pairs):
        errors.append(f"{cfg.data}: every pair has identical chosen and rejected; nothing to learn")
    sources = sorted({p["source"] for p in pairs})
    return Preflight(len(pairs), truncated, identical, warnings, errors, sources, pairs, enc)


# ---------------------------------------------------------------- training

def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest whole ``checkpoint-N`` in ``output_dir`` (``core.models.resume``: one cut mid-save is skipped)."""
    from core.models.resume import resumable_checkpoint

    return resumable_checkpoint(output_dir)[0]


def tokenized_dataset(cfg: TrainConfig, tok, pre: Preflight):
    from datasets import Dataset

    from core.io.pairs import normalise_weights

    if not pre.records:  # a Preflight built by hand: read and tokenize here
        pre = preflight(cfg, tok)
    dropped = set(pre.identical)
    kept = [(p, e) for i, (p, e) in enumerate(zip(pre.records, pre.encoded, strict=True)) if i not in dropped]
    weights = normalise_weights([cfg.source_weights.get(p["source"], p["weight"]) for p, _ in kept])
    source_idx = {s: i for i, s in enumerate(pre.sources)}
    return Dataset.from_list([{**e, "weight": w, "source_idx": source_idx[p["source"]]}
                              for (p, e), w in zip(kept, weights, strict=True)])


def _base_name(cfg: TrainConfig) -> str:
    """The base model's name written into the adapters (one that ``load_series(base_names=...)`` accepts)."""
    if cfg.base_names:
        return cfg.base_names[0]
    if cfg.init_adapter:
        cfg_file = Path(cfg.init_adapter) / "adapter_config.json"
        try:
            return json.loads(cfg_file.read_text())["base_model_name_or_path"]
        except (OSError, KeyError, json.JSONDecodeError):
            pass
    return Path(cfg.base_model).name


# what scales a LoRA update besides its weights: a run continued from an adapter takes these from it, so that
# training starts from exactly the model the start checkpoint scores as (alpha 64 read as 32 halves its update)
SCALING_FIELDS = ("lora_alpha", "use_rslora", "alpha_pattern", "rank_pattern")


def start_scaling(cfg: TrainConfig) -> dict:
    """The init adapter's scaling settings (``SCALING_FIELDS`` its adapter_config.json holds); {} without one."""
    from core.io import jsonsafe

    if not cfg.init_adapter:
        return {}
    path = Path(cfg.init_adapter) / "adapter_config.json"
    try:
        config = jsonsafe.loads(path.read_text(encoding="utf-8-sig"), str(path))
    except OSError as e:
        raise InputError(f"{path}: the init adapter's config cannot be read ({e.strerror or e})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a JSON object (a PEFT adapter config)")
    found = {k: config[k] for k in SCALING_FIELDS if config.get(k) is not None}
    alpha = found.get("lora_alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0):
        raise InputError(f"{path}, field 'lora_alpha': expected a positive number, got {alpha!r}")
    return found


def lora_config(cfg: TrainConfig, model=None, family: Family | None = None):
    """LoRA r/alpha of the run on the family's targets (text: all linear layers; Qwen-VL: the language model's);
    a continued adapter's own scaling (``start_scaling``) over the config's alpha."""
    from peft import LoraConfig

    targets = (family or family_of(cfg)).lora_targets(model)
    scaling = {"lora_alpha": cfg.lora_alpha, **start_scaling(cfg)}
    return LoraConfig(r=cfg.lora_r, target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM", **scaling)


def _load_init_adapter(model, path: str, family: Family) -> None:
    """Copy a LoRA checkpoint's weights into the trainer's "default" adapter (same r and targets), under the
    family's current module names (a VL adapter of ms-swift on transformers < 4.52 is mapped)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = Path(path) / "adapter_model.safetensors"
    if not weights.is_file():
        raise InputError(f"{path}: init_adapter has no adapter_model.safetensors")
    r = model.peft_config["default"].r
    try:
        state = load_file(weights)
        result = set_peft_model_state_dict(model, family.adapter_state(state))
    except RuntimeError as e:  # shapes differ: another r, or an adapter of another base
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e))
        raise InputError(f"{path}: adapter weights do not fit this LoRA config (r={r}): {detail[:200]}") from None
    if result.unexpected_keys:
        raise InputError(f"{path}: adapter weights do not fit this LoRA config (r={r}): "
                         f"unexpected {result.unexpected_keys[0]}")


def dpo_args(cfg: TrainConfig, cuda: bool):
    from trl import DPOConfig

    bf16 = cuda if cfg.bf16 is None else cfg.bf16
    return DPOConfig(
        output_dir=cfg.output_dir, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate, beta=cfg.beta,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=cfg.max_length, bf16=bf16, use_cpu=not cuda, seed=cfg.seed, data_seed=cfg.seed,
        save_strategy="steps", save_steps=cfg.save_steps, logging_steps=cfg.logging_steps, report_to=[],
        gradient_checkpointing=cfg.gradient_checkpointing, disable_tqdm=True, lr_scheduler_type="constant",
        remove_unused_columns=False)


def load_base(cfg: TrainConfig, cuda: bool, family: Family | None = None):
    """The base model to train, through its family, on the CPU (the Trainer places it, on each process's own
    GPU under accelerate): bf16 on CUDA unless ``cfg.bf16`` says otherwise, fp32 on the CPU."""
    import torch

    from core.models.checkpoints import check_model_dir

    dtype = torch.bfloat16 if (cuda if cfg.bf16 is None else cfg.bf16) else torch.float32
    return (family or family_of(cfg)).load_model(check_model_dir(cfg.base_model), "cpu", dtype)


def build_trainer(cfg: TrainConfig, callbacks: list | None = None, tokenizer=None, pre: Preflight | None = None):
    """The CPOTrainer for ``cfg``, its LoRA adapter initialised (from ``init_adapter`` when given)."""
    import torch

    from core.cpo.trainer import CPOTrainer

    cuda = torch.cuda.is_available()
    tok = tokenizer or processing(cfg)
    pre = pre or preflight(cfg, tok)
    args = dpo_args(cfg, cuda)
    family = family_of(cfg)
    model = load_base(cfg, cuda, family)
    # TRL gets the tokenizer for either family: the batches come from the family's collator (TRL 1.16's vision
    # collator gives both sides the same images and needs the full processor, which needs torchvision)
    trainer = CPOTrainer(model=model, args=args, train_dataset=tokenized_dataset(cfg, tok, pre),
                         processing_class=family.tokenizer(tok), peft_config=lora_config(cfg, model, family),
                         callbacks=callbacks or [], data_collator=family.preference_collator(tok, cfg.max_length),
                         objective=cfg.objective, cpo_alpha=cfg.cpo_alpha, sources=pre.sources, family=family)
    if cfg.init_adapter:
        _load_init_adapter(trainer.model, cfg.init_adapter, family)
    trainer.model.peft_config["default"].base_model_name_or_path = _base_name(cfg)
    return trainer


def train(cfg: TrainConfig, progress: Callable[[float, float, str], None] | None = None,
          should_cancel: Callable[[], bool] | None = None) -> TrainResult:
    """Run ``cfg`` into ``cfg.output_dir``; a cancel saves the adapter and returns with ``cancelled=True``."""
    from core.cpo.callbacks import CancelCallback, FiniteCallback, MetricsCallback, ProgressCallback

    tok = processing(cfg)
    pre = preflight(cfg, tok)
    if pre.errors:
        raise InputError("; ".join(pre.errors))
    out = Path(cfg.output_dir)
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under accelerate launch every process runs this; rank 0 writes
    if rank0 and not cfg.resume:
        check_run_folder(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(out, "run folder") if rank0 else None  # one trainer per run folder, held until return
    alpha = start_scaling(cfg).get("lora_alpha", cfg.lora_alpha)
    if alpha != cfg.lora_alpha:  # the start adapter's alpha is the one trained with: the saved config says so
        if progress:
            progress(0, 1, f"warning: lora_alpha {alpha:g} of the init adapter is used, not {cfg.lora_alpha} "
                           "(a continued adapter keeps its own scaling)")
        if float(alpha).is_integer():  # the config's field is whole; a fractional alpha still trains as read
            cfg = dataclasses.replace(cfg, lora_alpha=int(alpha))
    if rank0:
        cfg.save(out / "config.json")
    resume_from = _resume_point(out, progress, rank0) if cfg.resume else None
    cancel = CancelCallback(should_cancel or (lambda: False))
    callbacks = [MetricsCallback(out / "metrics.jsonl", pre.sources, append=resume_from is not None),
                 ProgressCallback(progress, pre.warnings), FiniteCallback(), cancel]
    trainer = build_trainer(cfg, callbacks, tokenizer=tok, pre=pre)
    started = time.time()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        adapter = _save_final(trainer, out / "adapter")
    except Exception as e:  # every failure becomes one readable message (the cause stays chained)
        if is_disk_full(e):
            raise InputError(f"{out}: disk full while saving the run (step {trainer.state.global_step}); the "
                             "checkpoint being written is incomplete and a resume skips it. Free some space, then "
                             "resume") from e
        raise RuntimeError(failure_message(e)) from e
    if progress:
        progress(1, 1, f"{'cancelled' if cancel.cancelled else 'done'} at step {trainer.state.global_step} "
                       f"in {time.time() - started:.0f} s")
    if lock:
        lock.close()
    return TrainResult(adapter, trainer.state.global_step, cancel.cancelled, out / "metrics.jsonl")


def check_run_folder(out: Path, cfg: TrainConfig) -> None:
    """The rule of ``--out``: a new run writes into a new or empty folder, or one holding only this very config
    (the runs page writes it before the job starts). Anything else, a config.json, README.md or metrics.jsonl
    of the user's, a previous run (continued with ``resume``), is refused, naming the folder; nothing changes."""
    from core.io.locks import LOCK_FILE

    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise InputError(f"{out}: a file is there; output_dir names the run folder (choose a new folder)")
    names = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    if names == ["config.json"] and _same_config(out / "config.json", cfg):
        return
    if names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise InputError(f"{out}: output_dir holds files ({shown}); a new run is written only into a new or empty "
                         "folder, so nothing was changed. Choose another output_dir, or set resume to continue "
                         "a run of the workbench there")


def _same_config(path: Path, cfg: TrainConfig) -> bool:
    try:
        return TrainConfig.load(path) == cfg
    except InputError:
        return False


def _resume_point(out: Path, progress: Callable[[float, float, str], None] | None, rank0: bool) -> Path:
    """The last whole checkpoint to resume from, saying which cut-off ones were skipped; metrics.jsonl loses
    the rows past it (the resumed run logs those steps again)."""
    from core.models.resume import resumable_checkpoint, trim_metrics

    resume_from, skipped = resumable_checkpoint(out)
    for message in skipped:
        if progress:
            progress(0, 1, f"warning: {out / message}")
    if resume_from is None:
        raise InputError(f"{out}: resume asked, but the folder holds no complete checkpoint-N to continue from"
                         + (f" ({'; '.join(skipped)})" if skipped else ""))
    if rank0:
        step = json.loads((resume_from / "trainer_state.json").read_text())["global_step"]
        trim_metrics(out / "metrics.jsonl", step)
    return resume_from


def is_disk_full(e: BaseException) -> bool:
    """A full disk or quota anywhere in ``e``'s chain; torch.save says only "[enforce fail at
    inline_container.cc] . unexpected pos" (its writer saw a short write), with no errno."""
    import errno

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or ("inline_container" in text and "unexpected pos" in text):
            return True
        e = e.__cause__ or e.__context__
    return False


def failure_message(e: Exception) -> str:
    import torch

    text = f"{type(e).__name__}: {e}".splitlines()[0]
    if isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower():
        return f"training ran out of memory ({text}); lower batch_size or max_length, or set gradient_checkpointing"
    return f"training failed: {text}"


def _save_final(trainer, folder: Path) -> Path:
    trainer.save_model(str(folder))
    if trainer.args.should_save:
        trainer.state.save_to_json(str(folder / "trainer_state.json"))
    return folder
