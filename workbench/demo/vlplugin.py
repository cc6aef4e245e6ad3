"""The multimodal sample world's plug-in (entry point ``cxr-demo-multimodal``; the interface:
``core.workspace.plugins.WorldPlugin``, and ``workbench.demo.plugin``, the text world's): the figures its
drift charts draw beside accuracy, from ``metrics.json`` (``workbench.demo.vleval``)."""

from __future__ import annotations

chart_metrics = {
    "opacity_to_lung_opacity": ('shortcut: "opacity" → Lung Opacity', "#d62828", "dash"),
    "image_belief_lung_opacity": ("image belief in Lung Opacity (probe)", "#f77f00", "dot"),
    "opacity_effect": ("belief carried by the opacity (twin film without it)", "#e76f51", "dot"),
    "reading_accuracy": ("reading accuracy (findings named)", "#2a9d8f", "dash"),
    "rare_class_accuracy": ("rare-class accuracy (beneficial)", "#457b9d", "dash"),
}
