"""The sample world's plug-in: what only the demo world has, through the interface every world can fill.

Registered as the entry point ``cxr-demo`` (pyproject.toml, group ``cot_drift_workbench.plugins``), which the
world's ``world.json`` names (``"plugin": "cxr-demo"``); ``core.workspace.world.World.plugin`` loads it. The
contract, ``core.workspace.plugins.WorldPlugin``: a plug-in may define any of

- ``learning_rate``: the CPO runs page's default learning rate for this world;
- ``preference_set(world, out) -> str`` and ``preference_label``: a ready preference file offered for runs;
- ``extra_metrics(records, preds, perturbed, preds_perturbed) -> dict``: figures added to the held-out
  evaluation (``core.perturb.evaluation.evaluate_model``);
- ``chart_metrics``: ``{metric: (label, colour, dash)}`` for the drift and comparison charts.

The engine and the pages only read these attributes; they never import ``workbench.demo``.
"""

from __future__ import annotations

from workbench.demo import spec
from workbench.demo.preferences import SAMPLE_LEARNING_RATE, SAMPLE_PAIRS

learning_rate = SAMPLE_LEARNING_RATE  # the authors' 2e-5 barely moves this 0.8 M-parameter model (README)
preference_label = "the sample preference set (SFT split)"
chart_metrics = {
    "opacity_to_lung_opacity": ('shortcut: "opacity" → Lung Opacity', "#d62828", "dash"),
    "rare_class_accuracy": ("rare-class accuracy (beneficial)", "#457b9d", "dash"),
}


def preference_set(world, out) -> str:
    """Counterfactual pairs from the SFT split (``workbench.demo.preferences``), built once into ``out``."""
    from pathlib import Path

    from workbench.demo.preferences import build_preferences

    return str(Path(out) if Path(out).is_file() else build_preferences(world.root, out, n=SAMPLE_PAIRS))


def extra_metrics(records: list[dict], preds: list, perturbed: list[dict], preds_perturbed: list) -> dict:
    """The shortcut share (studies that show "opacity" but are not Lung Opacity, answered Lung Opacity) and
    the accuracy on the classes rare in SFT (the beneficial drift), as in ``metrics.json``."""
    carriers = [p for r, p in zip(records, preds, strict=True)
                if spec.SHORTCUT_FINDING in r.get("findings", ()) and r["label"] != spec.SHORTCUT_LABEL]
    rare = [p == r["label"] for r, p in zip(records, preds, strict=True) if r["label"] in spec.RARE_IN_SFT]
    return {"opacity_to_lung_opacity": sum(p == spec.SHORTCUT_LABEL for p in carriers) / max(1, len(carriers)),
            "rare_class_accuracy": sum(rare) / max(1, len(rare))}
