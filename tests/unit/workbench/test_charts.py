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
    assert fig.data[0].name == charts.GREEDY_ACCURACY and "greedy decoding" in fig.data[0].name
    assert list(fig.data[0].x) == [0, 80] and list(fig.data[0].y) == [0.9, 0.8]


# ---- drift explorer charts ------------------------------------------------------------------------------
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core.drift.explore import TokenMatrix  # noqa: E402


def matrix(metric="effect_drift"):
    direction = np.array([["", "", ""], ["detrimental", "neutral", "beneficial"]], dtype=object)
    return TokenMatrix(metric, ["base", "<b>ck</b>"], [0, 1, 2], ["<think>", " a", " </think>"],
                       np.array([[0.0, 0.0, np.nan], [-0.4, 0.01, 0.3]]),
                       [["'<think>' p=0.9\ntop: '<think>' 0.9"] * 3] * 2, direction)


def test_token_heatmap_escapes_tokens_and_marks_directions():
    fig = charts.token_heatmap(matrix(), title="<script>x</script>")
    heat = fig.data[0]
    assert list(fig.layout.xaxis.ticktext) == ["&lt;think&gt;", " a", " &lt;/think&gt;"]
    assert list(heat.y) == ["base", "&lt;b&gt;ck&lt;/b&gt;"] and "<think>" not in heat.customdata[0][0]
    assert "<br>" in heat.customdata[0][0]  # line breaks of the hover text survive as markup
    assert heat.zmid == 0 and heat.zmin == -0.4  # diverging scale around zero for belief metrics
    marks = {t.name: (list(t.x), list(t.y)) for t in fig.data[1:]}
    assert marks == {"detrimental position": ([0], ["&lt;b&gt;ck&lt;/b&gt;"]),
                     "beneficial position": ([2], ["&lt;b&gt;ck&lt;/b&gt;"])}
    down = fig.data[1].customdata[0]  # a ▼ cell's hover: what every cell's says (token, top-k, value), then ▼
    assert "top: '&lt;think&gt;' 0.9" in down and "-0.4000" in down and down.endswith("▼ detrimental position")
    assert "&lt;script&gt;" in fig.layout.title.text


def test_token_heatmap_of_a_token_metric_is_sequential():
    fig = charts.token_heatmap(matrix("kl_base"))
    assert fig.data[0].zmid is None


def test_belief_lines_one_per_checkpoint_in_series_order():
    path = pd.DataFrame({"checkpoint": ["base"] * 3 + ["ck-1"] * 3, "position": [-1, 0, 1] * 2,
                         "gold_prob": [0.1, 0.5, 0.9, 0.1, 0.2, 0.1], "gold": "Edema",
                         "answer": ["Edema", "<i>x</i>", "Edema"] * 2, "p:Edema": 0.5, "p:Mass": 0.5})
    fig = charts.belief_lines(path)
    assert [t.name for t in fig.data] == ["base", "ck-1"] and list(fig.data[1].y) == [0.1, 0.2, 0.1]
    assert "&lt;i&gt;" in fig.data[0].customdata[1]
    dist = charts.answer_distribution(path, "ck-1", ["Edema", "Mass"])
    assert [t.name for t in dist.data] == ["Edema", "Mass"]


def test_summary_over_steps_shades_detrimental_changes():
    summary = pd.DataFrame({"checkpoint": ["base", "c1", "c2"], "step": [0, 1, 2], "accuracy": [1, 0.5, 0.7],
                            "final_gold_prob": [0.9, 0.4, 0.6], "kl_base": [0, 1, 1], "kl_prev": [0, 1, 0.2],
                            "share_detrimental": [0, 0.1, 0.05], "share_beneficial": [0, 0.02, 0.05]})
    changes = pd.DataFrame({"from_step": [0, 1], "to_step": [1, 2], "changed": [True, True],
                            "direction": ["detrimental", "beneficial"], "page_hinkley_alarm": [True, False]})
    fig = charts.summary_over_steps(summary, changes)
    assert len(fig.data) == 7 and fig.data[6].name == "detrimental step change (shaded)"  # the shading's key
    assert fig.data[0].name == charts.PROBE_ACCURACY and "teacher-forced" in fig.data[0].name  # not the greedy one
    shaded = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(shaded) == 2 and {s.x0 for s in shaded} == {0}  # one rectangle per subplot, step 0 -> 1 only
    note, = fig.layout.annotations  # the alarm named once, above the plot (y = 1 paper, anchored below it)
    assert note.text.startswith("Page-Hinkley alarm") and (note.x, note.yref, note.y, note.yanchor) == (1, "paper", 1, "bottom")


def test_perturbation_charts():
    df = pd.DataFrame({"checkpoint": ["base", "c1"], "step": [0, 1], "gold_before": [0.9, 0.8],
                       "gold_after": [0.9, 0.1], "answer_before": ["A", "A"], "answer_after": ["A", "B"],
                       "flip": [False, True]})
    fig = charts.perturbation_beliefs(df)
    assert [t.name for t in fig.data] == ["before the swap", "after the swap", "answer flipped"]
    assert list(fig.data[2].x) == ["c1"]
    summary = pd.DataFrame({"checkpoint": ["base", "c1"], "step": [0, 1], "accuracy_before": [1, 1],
                            "accuracy_after": [1, 0.5], "flip_rate": [0, 0.5]})
    assert list(charts.perturbation_over_steps(summary).data[2].y) == [0, 0.5]
    cats = pd.DataFrame({"gold": ["A", "A", "B"], "checkpoint": ["base", "c1", "c1"], "step": [0, 1, 1],
                         "flip_rate": [0.0, 0.5, 1.0]})
    heat = charts.category_flip_heatmap(cats)
    assert list(heat.data[0].x) == ["base", "c1"] and list(heat.data[0].y) == ["A", "B"]


def long_matrix(n=4096, checkpoints=7):
    """A trajectory of ``n`` tokens whose hover text lists five alternatives per cell, like a real analysis."""
    rng = np.random.default_rng(0)
    values = rng.normal(0, 0.05, (checkpoints, n))
    values[-1, n * 3 // 4] = -0.8
    direction = np.where(values < -0.1, "detrimental", np.where(values > 0.1, "beneficial", "neutral")).astype(object)
    hover = [[f"' w{p}' p=0.123 rank 4\ntop: ' a' 0.500, ' bb' 0.200, ' c' 0.100, ' dd' 0.050, ' e' 0.010"
              for p in range(n)] for _ in range(checkpoints)]
    return TokenMatrix("effect_drift", [f"checkpoint-{k}" for k in range(checkpoints)], list(range(n)),
                       [f" w{p}" for p in range(n)], values, hover, direction)


def test_a_window_of_a_long_cot_sends_its_cells_and_a_downsampled_strip_only():
    from core.drift import explore

    m = long_matrix()
    w = explore.window(m, 2950, 150)
    w.hover = [row[w.first: w.first + 150] for row in m.hover]
    fig = charts.token_heatmap(w, minimap=explore.minimap(m, bins=400), focus=3000)
    heat, strip = [t for t in fig.data if t.type == "heatmap"]
    assert np.shape(heat.z) == (7, 150) and list(heat.x)[:2] == [2950, 2951] and len(fig.layout.xaxis.ticktext) == 75
    assert np.shape(strip.z) == (1, 400) and strip.showscale is False and "positions 0 to 9" in strip.customdata[0][0]
    assert heat.zmin == strip.zmin == -0.8 and heat.zmax == 0.8  # the whole CoT's scale, in both
    marks = [t for t in fig.data if t.type == "scatter"]
    assert all(2950 <= x < 3100 for t in marks for x in t.x)  # markers of the window only
    frames = [(s.x0, s.x1) for s in fig.layout.shapes]
    assert (2949.5, 3099.5) in frames and (2999.5, 3000.5) in frames  # the window on the strip; the focus
    assert "position 3000<br>" in heat.customdata[0][50]
    assert list(fig.layout.xaxis.tickvals[:2]) == [2950, 2952]  # 150 columns: every other one labelled
    assert len(charts.token_heatmap(explore.window(m, 0, charts.TOKEN_LABELS)).layout.xaxis.ticktext) == charts.TOKEN_LABELS
    whole = charts.token_heatmap(m)
    assert len(fig.to_json()) * 10 < len(whole.to_json())  # what reaches the browser


def test_a_window_without_hover_text_shows_the_tokens():
    from core.drift import explore

    m = long_matrix(n=300, checkpoints=2)
    m.hover = None
    fig = charts.token_heatmap(explore.window(m, 0, 100), minimap=explore.minimap(m))
    assert fig.data[0].customdata[1][5] == "position 5<br>' w5'"


# ---- every label from the data escaped, on the page, in presentation mode and in the exports ----------------
HOSTILE = "ck <a href='https://evil.example/x'>x</a><img src=x>"


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple, np.ndarray)):
        for v in value:
            yield from _strings(v)


def test_every_chart_escapes_checkpoint_and_label_names_in_presentation_mode_and_exports():
    """Plotly renders a subset of HTML (links included) in tick labels, legends, hover text and titles: a checkpoint
    folder or label named with markup must show as text wherever a chart puts it, and in the HTML export."""
    from workbench import figures, watch_charts

    names = ["base", HOSTILE]
    summary = pd.DataFrame({"checkpoint": names, "step": [0, 1], "accuracy": [1, 0.5], "final_gold_prob": [0.9, 0.4],
                            "kl_base": [0, 1], "kl_prev": [0, 1], "share_detrimental": [0, 0.1],
                            "share_beneficial": [0, 0.02], "flip_rate": [0, 0.5], "perturbed_accuracy": [1, 0.4],
                            "malformed": [0, 0], "accuracy_before": [1, 1], "accuracy_after": [1, 0.5],
                            "gold_before": [0.9, 0.8], "gold_after": [0.9, 0.1], "answer_before": ["A", HOSTILE],
                            "answer_after": [HOSTILE, "B"], "flip": [False, True], "run": names})
    cats = pd.DataFrame({"gold": [HOSTILE, "A", "A"], "checkpoint": ["base", HOSTILE, HOSTILE], "step": [0, 1, 1],
                         "flip_rate": [0.0, 0.5, 1.0]})
    built = {"drift_over_steps": charts.drift_over_steps(summary),
             "summary_over_steps": charts.summary_over_steps(summary),
             "perturbation_beliefs": charts.perturbation_beliefs(summary),
             "perturbation_over_steps": charts.perturbation_over_steps(summary),
             "category_flip_heatmap": charts.category_flip_heatmap(cats),
             "category_heatmap": charts.category_heatmap(pd.DataFrame({"base": [1.0], HOSTILE: [0.5]}, index=[HOSTILE])),
             "run_comparison": charts.run_comparison(summary),
             "watch_curves": watch_charts.watch_curves(summary, pd.DataFrame({"step": [1], "loss": [1.0]}),
                                                       [{"step": 1, "rule": HOSTILE}])}
    for name, fig in built.items():
        out = figures.scaled(figures.finished(fig, f"{HOSTILE} · world"), figures.PRESENTATION_SCALE)
        raw = [s for s in _strings(out.to_plotly_json()) if "<a " in s or "<img" in s]
        assert not raw, (name, raw)
        page = figures.html_file(out, figures.plot_config("f", "svg", out))
        assert HOSTILE not in page and "<img src=x>" not in page, name  # the title and the embedded figure
