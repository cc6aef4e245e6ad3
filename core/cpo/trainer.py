"""The CPO objectives on TRL's DPOTrainer: pure loss functions, a weighted collator and a small subclass.

    losses, nll = cpo_losses(policy_chosen, policy_rejected, chosen_nll, beta=0.1)   # per pair, (B,)
    losses = dpo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1)
    trainer = CPOTrainer(model=..., args=DPOConfig(...), train_dataset=tokenized, processing_class=tok,
                         peft_config=lora, objective="cpo", cpo_alpha=1.0, sources=["shortcut", "other"])

Three objectives share one forward pass of the policy over ``[chosen; rejected]`` (TRL's batch layout):

- ``cpo``: TRL's CPO loss (Xu et al. 2024, arXiv 2401.08417, eq. 3; ``trl.experimental.cpo``, loss_type
  "sigmoid"): ``-log sigmoid(beta * (log pi(y_w|x) - log pi(y_l|x))) + alpha * NLL(y_w)``, reference-free,
  the objective the authors' released CPO script runs (ms-swift ``rlhf_type cpo``).
- ``cpo++``: DPO's sigmoid loss (Rafailov et al. 2023, eq. 7) against the frozen SFT policy (the LoRA adapter
  disabled), each pair weighted by its ``weight`` (normalised to mean one over the dataset), as in the
  authors' CPO++ trainer.
- ``sft``: the NLL of the chosen completion only (the paper's SFT baseline).

On a vision-language base the batch also carries ``pixel_values`` / ``image_grid_thw`` (chosen rows' images,
then rejected rows': a visual pair's rejected side is encoded with its own image) and ``mm_token_type_ids``,
from which Qwen2.5-VL computes its 3-D rotary positions (``VLPreferenceCollator``); the policy and the
reference forward both get them.

Rewards follow each objective's paper: ``beta * log pi`` for cpo and sft, ``beta * (log pi - log pi_ref)``
for cpo++. Per-source ``loss/<source>`` and ``accuracy/<source>`` are logged next to TRL's metrics.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import trl
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from core.cpo.config import OBJECTIVES
from core.io.pairs import normalise_weights  # noqa: F401 - the one weight rule (core.io.pairs)

# CPOTrainer leans on private parts of TRL's DPOTrainer (and of transformers' Trainer under it), which change
# between minor releases without notice. pyproject.toml pins the TRL range they were checked against; this
# table is what was checked, so a TRL outside it fails here, naming the hook, not deep inside a training step.
TESTED_TRL = ">=1.16,<1.17"
HOOKS = {  # overridden method -> its parameters after self, as TRL calls them
    "_prepare_dataset": ("dataset", "processing_class", "args", "dataset_name"),
    "_set_signature_columns_if_needed": (),
    "_compute_loss": ("model", "inputs", "return_outputs"),
    "_save": ("output_dir", "state_dict"),
}
HOOK_USES = {  # TRL method -> what its source must contain for the overrides and attributes above to work
    "__init__": ("self._metrics =", "self._total_train_tokens =", "add_fused_lm_head("),  # read in _log_batch,
    "compute_loss": ("self._compute_loss(",),                                              # fused_lm_head=True
}


def hook_problems(base: type = DPOTrainer) -> list[str]:
    """What no longer fits between ``CPOTrainer`` and ``base`` (empty when all is well), one line per hook."""
    problems = []
    for name, params in HOOKS.items():
        method = getattr(base, name, None)
        if method is None:
            problems.append(f"{base.__name__}.{name} is gone (CPOTrainer overrides it)")
            continue
        got = tuple(inspect.signature(method).parameters)[1:]
        if got != params:
            problems.append(f"{base.__name__}.{name} now takes {got}, CPOTrainer's override expects {params}")
    for name, needles in HOOK_USES.items():
        try:
            source = inspect.getsource(getattr(base, name))
        except OSError:  # an install without sources (.pyc only): nothing to read, nothing to claim
            continue
        except (AttributeError, TypeError):  # gone, or not Python code (object.__init__)
            source = ""
        problems += [f"{base.__name__}.{name} no longer contains {n!r} (CPOTrainer relies on it)"
                     for n in needles if n not in source]
    return problems


def check_hooks(base: type = DPOTrainer) -> None:
    """Raise ``RuntimeError`` naming each private TRL hook that moved, with the installed and tested versions."""
    problems = hook_problems(base)
    if problems:
        raise RuntimeError(f"TRL {trl.__version__} does not fit core.cpo.trainer.CPOTrainer (tested: trl"
                           f"{TESTED_TRL}; install that range): " + "; ".join(problems))


def cpo_losses(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair CPO preference loss ``-log sigmoid(beta * (lc - lr))``; summed log-probs in, (B,) out."""
    return -F.logsigmoid(beta * (chosen_logps - rejected_logps))


def dpo_losses(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
               ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair sigmoid DPO loss ``-log sigmoid(beta * ((lc - rc) - (lr - rr)))``; (B,) each, (B,) out."""
    return -F.logsigmoid(beta * ((chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)))


def chosen_nll(per_token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean NLL over the masked tokens (TRL CPO's ``nll_loss``): (B, T) log-probs and mask -> scalar."""
    return -(per_token_logps * mask).sum() / mask.sum().clamp(min=1)


def objective_loss(objective: str, losses: torch.Tensor, weights: torch.Tensor, nll: torch.Tensor,
                   cpo_alpha: float) -> torch.Tensor:
    """Join the per-pair losses (B,), the pair weights (B,) and the chosen NLL (scalar) into the batch loss."""
    if objective == "cpo":
        return losses.mean() + cpo_alpha * nll
    if objective == "cpo++":
        return (losses * weights).mean()
    if objective == "sft":
        return nll
    raise ValueError(f"objective must be one of {tuple(OBJECTIVES)}, got {objective!r}")


@dataclass
class WeightedPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator plus each pair's ``weight`` and ``source_idx``.

    >>> c = WeightedPreferenceCollator(pad_token_id=0)
    >>> b = c([{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5], "weight": 2.0, "source_idx": 1}])
    >>> b["input_ids"].tolist(), b["weight"].tolist(), b["source_idx"].tolist()
    ([[1, 2, 3, 0], [1, 2, 4, 5]], [2.0], [1])
    """

    def torch_call(self, examples: list[dict]) -> dict:
        out = super().torch_call(examples)
        out["weight"] = torch.tensor([float(e.get("weight", 1.0)) for e in examples])  # (B,)
        out["source_idx"] = torch.tensor([int(e.get("source_idx", 0)) for e in examples])  # (B,)
        return out


@dataclass
class VLPreferenceCollator:
    """Pairs with images (``core.cpo.vl.encode_pairs`` rows) into TRL's ``[chosen; rejected]`` batch layout,
    right-padded, with the model's image inputs:

    - ``image_grid_thw``: the grid of every row's images, chosen rows first, then rejected rows (a visual
      pair's rejected side has its own image, and so its own grid and image-token count);
    - ``pixel_values`` / ``distinct_grid_thw``: the patches and grids of the batch's *distinct* images, and
      ``image_index``: which distinct image each row image is. A same-image pair's two rows share one image,
      so the (frozen) vision tower encodes it once (``CPOTrainer``), not twice as TRL's vision collator does;
    - ``mm_token_type_ids`` (1 on image tokens), from which Qwen2.5-VL computes its 3-D rotary positions.

    Only completions are cut at ``max_length``: a cut prompt would cut an image (pre-flight refuses those)."""

    processor: object  # core.models.vision.VLProcessor
    pad_token_id: int = 0
    max_length: int | None = None

    def __call__(self, examples: list[dict]) -> dict:
        from core.models.vision import IMAGE_PAD

        rows = [(e["prompt_ids"], e["chosen_ids"]) for e in examples]
        rows += [(e["rejected_prompt_ids"], e["rejected_ids"]) for e in examples]
        ids, mask, comp = self._pad(rows)
        out = {"input_ids": ids, "attention_mask": mask, "completion_mask": comp,
               "mm_token_type_ids": (ids == self.processor.token_id(IMAGE_PAD)).long(),  # (2B, T)
               "weight": torch.tensor([float(e.get("weight", 1.0)) for e in examples]),  # (B,)
               "source_idx": torch.tensor([int(e.get("source_idx", 0)) for e in examples])}  # (B,)
        paths = [p for e in examples for p in e["image_paths"]]
        paths += [p for e in examples for p in e["rejected_image_paths"]]
        if paths:
            distinct = list(dict.fromkeys(paths))
            out["pixel_values"], out["distinct_grid_thw"] = self._pixels(distinct)
            out["image_index"] = torch.tensor([distinct.index(p) for p in paths])  # (row images,)
            out["image_grid_thw"] = out["distinct_grid_thw"][out["image_index"]]  # (row images, 3)
        return out

    def _pad(self, rows: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cut = [(p, c[: max(0, self.max_length - len(p))] if self.max_length else c) for p, c in rows]
        width = max(len(p) + len(c) for p, c in cut)
        ids = torch.full((len(cut), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(cut), width), dtype=torch.long)
        comp = torch.zeros((len(cut), width), dtype=torch.long)
        for b, (p, c) in enumerate(cut):
            ids[b, : len(p) + len(c)] = torch.tensor(p + c)
            mask[b, : len(p) + len(c)] = 1
            comp[b, len(p): len(p) + len(c)] = 1
        return ids, mask, comp

    def _pixels(self, paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches and grids of the given images, in order.  -> (patches, D), (n_images, 3)"""
        from pathlib import Path

        from core.io.images import ImageRef, load_image

        proc = self.processor
        return proc.pixels([load_image(ImageRef(Path(p), f"pair image {p}"), proc.cfg.limits) for p in paths])


def image_inputs(model, inputs: dict) -> dict:
    """The image part of a VL batch as the model takes it: each row image's features (the vision tower run
    once over the distinct images, without gradients: it is frozen, and LoRA sits on the language model only),
    the grids and image-token types its 3-D positions come from. ``{}`` for a text batch."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from core.models.vision import vl_core

    if "image_index" not in inputs:
        return {k: inputs[k] for k in ("mm_token_type_ids",) if k in inputs}
    with torch.no_grad():
        distinct = vl_core(model).get_image_features(inputs["pixel_values"], inputs["distinct_grid_thw"],
                                                     return_dict=True).pooler_output  # per distinct image
    per_row = tuple(distinct[i] for i in inputs["image_index"].tolist())
    return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=per_row)},
            "image_grid_thw": inputs["image_grid_thw"], "mm_token_type_ids": inputs["mm_token_type_ids"]}


class CPOTrainer(DPOTrainer):
    """DPOTrainer with the workbench's objectives, pair weights and per-source metrics (see the module)."""

    def __init__(self, *args, objective: str = "cpo", cpo_alpha: float = 1.0, sources: list[str] | None = None,
                 **kwargs):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {tuple(OBJECTIVES)}, got {objective!r}")
        check_hooks()
        self.objective, self.cpo_alpha, self.sources = objective, cpo_alpha, list(sources or [])
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" in dataset.column_names:  # tokenized by core.cpo.train (BOS + prompt, " " + completion + EOS)
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, "weight", "source_idx",
                                                      "rejected_prompt_ids", "image_paths", "rejected_image_paths"]))

    def _sequence_logps(self, model, inputs: dict, labels: torch.Tensor, seq_len: int,
                        images: dict | None = None) -> torch.Tensor:
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                    use_cache=False, fused_lm_head=True, **(images or {}))  # images: image_inputs(...)
        return out.log_probs[:, -seq_len:]  # (2B, T-1), 0 where the label is -100

    def _compute_loss(self, model, inputs, return_outputs=False):
        mode = "train" if self.model.training else "eval"
        mask = inputs["completion_mask"][..., 1:].float()  # (2B, T-1): which next tokens are completion tokens
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)  # (2B, T)
        images = image_inputs(self.accelerator.unwrap_model(model), inputs)  # once for policy and reference
        per_token = self._sequence_logps(model, inputs, labels, mask.size(1), images) * mask  # (2B, T-1)
        chosen, rejected = per_token.sum(1).chunk(2)  # (B,), (B,)
        nll = chosen_nll(per_token.chunk(2)[0], mask.chunk(2)[0])
        if self.objective == "cpo++":
            with torch.no_grad(), self.accelerator.unwrap_model(self.model).disable_adapter():
                ref = (self._sequence_logps(model, inputs, labels, mask.size(1), images) * mask).sum(1)
            ref_chosen, ref_rejected = ref.chunk(2)
            losses = dpo_losses(chosen, rejected, ref_chosen, ref_rejected, self.beta)
            r_chosen, r_rejected = self.beta * (chosen - ref_chosen), self.beta * (rejected - ref_rejected)
        else:
            losses = cpo_losses(chosen, rejected, self.beta)
            r_chosen, r_rejected = self.beta * chosen, self.beta * rejected
        loss = objective_loss(self.objective, losses, inputs["weight"].to(losses.dtype), nll, self.cpo_alpha)
        self._log_batch(mode, inputs, losses.detach(), r_chosen.detach(), r_rejected.detach(), nll.detach())
        if return_outputs:
            return loss, {"chosen_logps": chosen, "rejected_logps": rejected}
        return loss

    def _log_batch(self, mode: str, inputs: dict, losses, r_chosen, r_rejected, nll) -> None:
        g = self.accelerator.gather_for_metrics
        losses, r_chosen, r_rejected = g(losses), g(r_chosen), g(r_rejected)
        correct, src = (r_chosen > r_rejected).float(), g(inputs["source_idx"])
        m = self._metrics[mode]
        m["rewards/chosen"].append(r_chosen.mean().item())
        m["rewards/rejected"].append(r_rejected.mean().item())
        m["rewards/margins"].append((r_chosen - r_rejected).mean().item())
        m["rewards/accuracies"].append(correct.mean().item())
        m["nll"].append(g(nll).mean().item())
        if mode == "train":
            self._total_train_tokens += g(inputs["attention_mask"].sum()).sum().item()
        m["num_tokens"] = [self._total_train_tokens]
        for i, name in enumerate(self.sources):
            keep = src == i
            if keep.any():
                m[f"loss/{name}"].append(losses[keep].mean().item())
                m[f"accuracy/{name}"].append(correct[keep].mean().item())

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Adapter only, without embedding layers (``core.models.series`` loads it onto the base as a checkpoint)."""
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            self.accelerator.unwrap_model(self.model).save_pretrained(output_dir, save_embedding_layers=False)
