"""A lean inference forward for the frozen LoRA layers of a checkpoint series (``core.models.series`` routes them).

PEFT's ``lora.Linear.forward`` spends about 0.24 ms of Python per call on argument checks, variant keyword
arguments, casts and four module calls; over the many small forward passes of scoring that was 16% of the
sample world's scoring time. ``LeanLoraLinear`` computes the same thing, in the same order and dtypes,
through ``F.linear``; a layer becomes one by a class swap, so isinstance checks, deepcopy and pickling all
still work. This module imports PEFT, so ``core.models.series`` imports it only once a series has adapters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear


class LeanLoraLinear(LoraLinear):
    """PEFT's ``lora.Linear`` with an inference forward ``(W x + b) + B(A cast(x)) * scaling`` (B's bias
    included, the input cast for adapters PEFT keeps in float32 on a bf16 base, as PEFT does). Anything it
    does not cover goes to PEFT's forward, checked per call: extra arguments, merged weights, several active
    adapters, DoRA and other variants, dropout while training, input casting switched off."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base = self.base_layer
        if args or kwargs or self.merged:
            return super().forward(x, *args, **kwargs)
        if self._disable_adapters:
            return F.linear(x, base.weight, base.bias)
        names = self._active_adapter
        name = names[0] if len(names) == 1 else None
        if name not in self.lora_A or name in self.lora_variant:
            return super().forward(x, *args, **kwargs)
        if self.training and not isinstance(self.lora_dropout[name], torch.nn.Identity):
            return super().forward(x, *args, **kwargs)
        a, b = self.lora_A[name], self.lora_B[name]
        if x.dtype != a.weight.dtype:
            if not getattr(self, "cast_input_dtype_enabled", True):
                return super().forward(x, *args, **kwargs)
            lora_x = x.to(a.weight.dtype)  # PEFT's _cast_input_dtype: adapters kept in float32 on a bf16 base
        else:
            lora_x = x
        result = F.linear(x, base.weight, base.bias)
        out = result + F.linear(F.linear(lora_x, a.weight, a.bias), b.weight, b.bias) * self.scaling[name]
        return out.to(result.dtype)


def lean_lora_forward(layer: torch.nn.Module) -> bool:
    """Make a plain-LoRA ``nn.Linear`` layer a ``LeanLoraLinear``; returns whether the layer is lean now."""
    if type(layer) is LeanLoraLinear:
        return True
    if type(layer) is not LoraLinear or type(layer.base_layer) is not torch.nn.Linear or layer.fan_in_fan_out:
        return False
    layer.__class__ = LeanLoraLinear
    return True
