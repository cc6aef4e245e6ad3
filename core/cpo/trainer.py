"""The CPO objectives on TRL's DPOTrainer: pure loss functions and a small subclass (batches: the family's collator).

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

The batches come from the base model's family (``core.models.families``: its ``preference_collator``); what
the model takes besides ids and mask (a Qwen-VL batch's image features, grids and image-token types, chosen
rows' images then rejected rows') comes from its ``forward_inputs``, computed once per batch for the policy
and the reference forward.

Rewards follow each objective's paper: ``beta * log pi`` for cpo and sft, ``beta * (log pi - log pi_ref)``
for cpo++. Per-source ``loss/<source>`` and ``accuracy/<source>`` are logged next to TRL's metrics.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
import trl
from trl import DPOTrainer

from core.cpo.config import OBJECTIVES
from core.errors import NonFiniteError
from core.io.pairs import normalise_weights  # noqa: F401 - the one weight rule (core.io.pairs)
from core.models.families import TEXT_FAMILY, Family

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


def check_finite(loss: torch.Tensor, weights: torch.Tensor, step: int) -> None:
    """Stop the run before a non-finite loss or pair weight reaches the optimizer (it would turn every adapter
    tensor into NaN and train on, reporting nothing): a ``NonFiniteError`` naming the step."""
    if not torch.isfinite(weights).all():
        raise NonFiniteError(f"step {step}: a pair weight is not finite ({weights.tolist()}); nothing of this step "
                             "was applied")
    if not torch.isfinite(loss):
        raise NonFiniteError(f"step {step}: the loss is {loss.item()} (not finite); nothing of this step was "
                             "applied. Lower the learning rate or check the pairs' weights")


class CPOTrainer(DPOTrainer):
    """DPOTrainer with the workbench's objectives, pair weights and per-source metrics (see the module)."""

    def __init__(self, *args, objective: str = "cpo", cpo_alpha: float = 1.0, sources: list[str] | None = None,
                 family: Family = TEXT_FAMILY, **kwargs):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {tuple(OBJECTIVES)}, got {objective!r}")
        check_hooks()
        self.objective, self.cpo_alpha, self.sources = objective, cpo_alpha, list(sources or [])
        self.family = family  # the base model's (core.models.families): what a batch gives the model besides ids
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
                    use_cache=False, fused_lm_head=True, **(images or {}))  # images: Family.forward_inputs
        return out.log_probs[:, -seq_len:]  # (2B, T-1), 0 where the label is -100

    def _compute_loss(self, model, inputs, return_outputs=False):
        mode = "train" if self.model.training else "eval"
        mask = inputs["completion_mask"][..., 1:].float()  # (2B, T-1): which next tokens are completion tokens
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)  # (2B, T)
        images = self.family.forward_inputs(self.accelerator.unwrap_model(model), inputs)  # once for both
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
        check_finite(loss, inputs["weight"], self.state.global_step + 1)
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
