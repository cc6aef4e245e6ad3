"""Chart builders as pure functions."""

from workbench import charts

ROWS = [
    {"checkpoint": "checkpoint-80", "step": 80, "accuracy": 0.8, "flip_rate": 0.2, "perturbed_accuracy": 0.7,
     "opacity_to_lung_opacity": 0.5, "rare_class_accuracy": 0.9, "malformed": 0.0},
    {"checkpoint": "base (SFT)", "step": 0, "accuracy": 0.9, "flip_rate": 0.05, "perturbed_accuracy": 0.88,
     "opacity_to_lung_opacity": 0.1, "rare_class_accuracy": 0.6, "malformed": 0.0},
]


def test_drift_table_orders_by_step_and_keeps_the_known_series():
    df = charts.drift_table(ROWS)
    assert list(df["step"]) == [0, 80]
    assert list(df.columns) == ["checkpoint", "step", *charts.DRIFT_SERIES]


def test_drift_table_of_nothing_is_empty_with_columns():
    assert charts.drift_table([]).empty


def test_drift_figure_has_one_named_line_per_series():
    fig = charts.drift_over_steps(charts.drift_table(ROWS))
    assert [t.name for t in fig.data] == [v[0] for v in charts.DRIFT_SERIES.values()]
    assert list(fig.data[0].x) == [0, 80] and list(fig.data[0].y) == [0.9, 0.8]
