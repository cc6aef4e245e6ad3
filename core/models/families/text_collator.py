"""The text family's preference batches for CPO: TRL's collator plus each pair's weight and source.

Imported by training only (it imports TRL): ``TextFamily.preference_collator`` builds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference


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
