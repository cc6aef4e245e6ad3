"""Held-out figures any world can fill, and the sample world's own figures through its plug-in."""

from core.perturb.evaluation import figures
from workbench import charts

RECS = [{"id": "a", "label": "Edema"}, {"id": "b", "label": "Edema"}, {"id": "c", "label": "Pneumonia", "category": "rare"},
        {"id": "d", "label": "Pneumonia"}]


def test_accuracy_per_category_malformed_and_flip_rate():
    preds = ["Edema", "Pneumonia", "Pneumonia", None]  # one wrong, one malformed
    twins = [{"id": "a~", "source_id": "a", "label": "Edema"}, {"id": "c~", "source_id": "c", "label": "Pneumonia"}]
    out = figures(RECS, preds, twins, ["Edema", "Edema"])  # c's twin flips to a wrong answer
    assert out["accuracy"] == 0.5 and out["malformed"] == 0.25 and out["studies"] == 4
    assert out["per_category"] == {"Edema": 0.5, "Pneumonia": 0.0, "rare": 1.0}
    assert out["perturbed_accuracy"] == 0.5 and out["flip_rate"] == 0.5


def test_without_twins_there_is_no_flip_rate():
    out = figures(RECS, ["Edema"] * 4)
    assert "flip_rate" not in out and out["accuracy"] == 0.5


def test_the_sample_world_adds_its_shortcut_share_through_its_plug_in(sample_world):
    from core.workspace.world import load_world
    from workbench.demo import spec

    w = load_world(sample_world)
    recs = [{"label": "Edema", "findings": [spec.SHORTCUT_FINDING]}, {"label": "Edema", "findings": [spec.SHORTCUT_FINDING]},
            {"label": spec.SHORTCUT_LABEL, "findings": [spec.SHORTCUT_FINDING]}]
    extra = w.plugin.extra_metrics(recs, [spec.SHORTCUT_LABEL, "Edema", spec.SHORTCUT_LABEL], [], [])
    assert extra["opacity_to_lung_opacity"] == 0.5  # of the two non-Lung-Opacity carriers, one took the shortcut
    assert set(w.chart_metrics()) == {"opacity_to_lung_opacity", "rare_class_accuracy"}
    assert w.evaluation_spec() == {"held_out": "test", "perturbed": "test_perturbed"}


def test_charts_draw_a_world_s_own_figures_only_when_given():
    rows = [{"checkpoint": "base", "step": 0, "accuracy": 0.9, "flip_rate": 0.1, "shortcut": 0.2}]
    assert "shortcut" not in charts.drift_table(rows)
    extra = {"shortcut": ("my shortcut", "#000000", "dash")}
    table = charts.drift_table(rows, extra)
    assert list(table.columns) == ["checkpoint", "step", "accuracy", "flip_rate", "shortcut"]
    assert "my shortcut" in [t.name for t in charts.drift_over_steps(table, extra).data]
    assert "my shortcut" in [t.name for t in charts.run_comparison(table.assign(run=["r"]), extra).data]


def test_core_and_pages_name_no_sample_world_specifics():
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    for path in [root / "core" / "cpo" / "runs.py", root / "pages" / "runs.py", root / "workbench" / "charts.py"]:
        text = path.read_text()
        assert "workbench.demo" not in text and "opacity_to" not in text and "lung opacity" not in text.lower(), path


def test_studies_with_images_are_never_decoded_as_text_only():
    """A held-out study with an X-ray decoded without the VL processor would silently lose its image: refused."""
    import pytest

    from core.errors import InputError
    from core.models.families import TEXT_FAMILY
    from core.perturb.evaluation import answers

    recs = [{"id": "s1", "prompt": "<image> Disease?", "completion": "x", "label": "Edema", "images": ["/x.jpg"]}]
    with pytest.raises(InputError, match="held-out study s1: has images"):
        answers(object(), object(), recs, family=TEXT_FAMILY)  # refused before the model or tokenizer is used
