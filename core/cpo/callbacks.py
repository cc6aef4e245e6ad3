"""TrainerCallbacks of a CPO run: metrics.jsonl, progress with ETA, non-finite weights, graceful cancel at a step end."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

# TRL's log keys kept in metrics.jsonl besides the per-source ``loss/<s>`` and ``accuracy/<s>``
KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "nll",
        "learning_rate", "grad_norm")


class MetricsCallback(TrainerCallback):
    """Append one JSON object per logging step: step, KEYS, per-source metrics (null when no pair of that
    source was in the step's batches), tokens/s, GPU memory, time."""

    def __init__(self, path: Path, sources: list[str], append: bool = False):
        self.path, self.sources, self.append = path, sources, append
        self._last: tuple[float, float] | None = None  # (time, tokens) at the previous log

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and not self.append:  # under accelerate launch: rank 0 writes
            self.path.write_text("")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        now, tokens = time.time(), float(logs.get("num_tokens", 0.0))
        rate = None
        if self._last is not None and now > self._last[0]:
            rate = (tokens - self._last[1]) / (now - self._last[0])
        self._last = (now, tokens)
        row = {"step": state.global_step, **{k: logs[k] for k in KEYS if k in logs},
               **{f"{m}/{s}": logs.get(f"{m}/{s}") for s in self.sources for m in ("loss", "accuracy")},
               "tokens_per_second": rate, "gpu_memory_gb": _gpu_memory_gb(), "time": now}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _gpu_memory_gb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


class ProgressCallback(TrainerCallback):
    """``progress(step, max_steps, message)`` after each step; the pre-flight warnings go first."""

    def __init__(self, progress: Callable[[float, float, str], None] | None, warnings: list[str]):
        self.progress, self.warnings, self.loss = progress, warnings, None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.progress:
            for w in self.warnings:
                self.progress(state.global_step, state.max_steps, f"warning: {w}")
            self.progress(state.global_step, state.max_steps, f"training from step {state.global_step}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.loss = (logs or {}).get("loss", self.loss)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress:
            loss = "" if self.loss is None else f" loss {self.loss:.4f}"
            self.progress(state.global_step, state.max_steps, f"step {state.global_step}/{state.max_steps}{loss}")


class FiniteCallback(TrainerCallback):
    """After each optimizer step, before any checkpoint is saved: stop the run when a trainable weight is no
    longer finite (a finite loss with an infinite gradient can still blow the adapter up). The trainable
    tensors of a LoRA run are small; a full fine-tune pays one pass over its weights per step."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        import torch

        from core.errors import NonFiniteError

        for name, p in model.named_parameters() if model is not None else ():
            if p.requires_grad and not torch.isfinite(p).all():
                raise NonFiniteError(f"step {state.global_step}: the trained weight {name} is not finite after the "
                                     "optimizer step; nothing of this step was saved. Lower the learning rate")
        return control


class CancelCallback(TrainerCallback):
    """At each step end: if ``should_cancel()``, save a checkpoint and stop (the run can resume from it)."""

    def __init__(self, should_cancel: Callable[[], bool]):
        self.should_cancel, self.cancelled = should_cancel, False

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step < state.max_steps and self.should_cancel():
            self.cancelled = True
            control.should_save = True
            control.should_training_stop = True
        return control
