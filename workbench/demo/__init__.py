"""The embedded demo worlds: a synthetic chest X-ray world, a tiny model, and its drifting RFT checkpoints.

``python -m workbench.demo.build`` (or ``workbench build-sample``) rebuilds ``sample_data/`` (the text world) from
scratch, seeded and deterministic; ``workbench build-sample --world multimodal`` (``workbench.demo.vlworld``)
builds ``sample_data/multimodal/``: the same labels with synthetic films and a tiny Qwen2.5-VL. See
``sample_data/README.md`` for what they hold and the drift they measured.
"""

from pathlib import Path

from core.workspace.world import SAMPLE_WORLD

# The demo worlds by name (``workbench demo --world NAME``, ``workbench build-sample --world NAME``).
SAMPLE_WORLDS: dict[str, Path] = {"text": SAMPLE_WORLD, "multimodal": SAMPLE_WORLD / "multimodal"}
