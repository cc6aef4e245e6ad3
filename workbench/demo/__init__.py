"""The embedded demo worlds: a synthetic chest X-ray world, a tiny model, and its drifting RFT checkpoints.

A plug-in like any other package's (``core.workspace.plugins``): ``pyproject.toml`` registers its two worlds
(entry points ``text`` and ``multimodal`` of ``cot_drift_workbench.worlds``, the functions below) and their
plug-ins (``cxr-demo``: ``workbench.demo.plugin``, ``cxr-demo-multimodal``: ``workbench.demo.vlplugin``). The
engine and the pages never import it; the command line (``workbench demo``, ``workbench build-sample``) does.

``python -m workbench.demo.build`` (or ``workbench build-sample``) rebuilds ``sample_data/`` (the text world) from
scratch, seeded and deterministic; ``workbench build-sample --world multimodal`` (``workbench.demo.vlworld``)
builds ``sample_data/multimodal/``: the same labels with synthetic films and a tiny Qwen2.5-VL. See
``sample_data/README.md`` for what they hold and the drift they measured. Where ``sample_data/`` is (a checkout's
or an installed copy's): ``workbench.shipped``.
"""

from pathlib import Path

from workbench.shipped import shipped


def text_world() -> Path:
    """The text sample world's folder (entry point ``text``)."""
    return shipped("sample_data")


def multimodal_world() -> Path:
    """The multimodal sample world's folder (entry point ``multimodal``)."""
    return shipped("sample_data") / "multimodal"


# The demo worlds by name (``workbench demo --world NAME``, ``workbench build-sample --world NAME``).
SAMPLE_WORLDS: dict[str, Path] = {"text": text_world(), "multimodal": multimodal_world()}
