"""Pick the compute device and dtype: CUDA with bf16 when present, else CPU with float32."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceInfo:
    device: str  # "cuda" | "mps" | "cpu"
    dtype: str  # "bfloat16" | "float16" | "float32"
    name: str

    def describe(self) -> str:
        return f"{self.name} ({self.device}, {self.dtype})"


def detect(prefer: str | None = None) -> DeviceInfo:
    import torch

    if prefer in (None, "cuda") and torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        return DeviceInfo("cuda", "bfloat16" if bf16 else "float16", torch.cuda.get_device_name(0))
    if prefer in (None, "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return DeviceInfo("mps", "float32", "Apple GPU")
    return DeviceInfo("cpu", "float32", f"CPU, {torch.get_num_threads()} threads")
