"""Figures on their way out of the page (``workbench.figures``): for a file, a slide and a projector."""

import json
import re

import numpy as np
import pandas as pd

from core.drift.explore import TokenMatrix
from workbench import charts, figures


def heatmap(columns: int = 80):
    m = TokenMatrix("effect_drift", ["base", "checkpoint-40"], list(range(columns)), [f" t{i}" for i in range(columns)],
                    np.zeros((2, columns)), None, np.full((2, columns), "", dtype=object))
    return charts.token_heatmap(m)


def summary():
    return charts.summary_over_steps(pd.DataFrame({"checkpoint": ["base", "checkpoint-40"], "step": [0, 40],
                                                   "accuracy": [0.9, 0.5], "kl_base": [0.0, 1.0]}))


def test_finished_gives_every_axis_room_for_its_labels_a_title_and_leaves_the_original_alone():
    fig = summary()
    done = figures.finished(fig, "Drift of <b>x</b> · sample_data")
    axes = [k for k in done.layout if re.fullmatch(r"[xy]axis\d*", k)]
    assert len(axes) == 4 and all(done.layout[k].automargin for k in axes)  # both subplots' axes
    assert done.layout.title.text == "Drift of &lt;b&gt;x&lt;/b&gt; · sample_data"
    assert done.layout.title.automargin and done.layout.title.yref == "paper"  # it pushes the top margin
    assert not fig.layout.xaxis.automargin and not fig.layout.title.text  # a copy: cached figures stay as built
    long = [t.name for t in done.data if t.name.startswith("probe accuracy")][0]
    assert "<br>" in long and all(len(line) <= figures.LEGEND_WRAP for line in long.split("<br>"))


def test_the_legend_sits_below_the_whole_figure_where_it_cannot_cover_an_axis_title():
    for fig in (summary(), heatmap(), charts.drift_over_steps(charts.drift_table(
            [{"checkpoint": "base", "step": 0, "accuracy": 0.9}]))):
        legend = fig.layout.legend
        assert (legend.yref, legend.y, legend.yanchor, legend.orientation) == ("container", 0, "bottom", "h")


def test_presentation_scaling_grows_every_font_marker_line_and_the_height():
    fig = figures.finished(heatmap(40), "heatmap")
    big = figures.scaled(fig, 1.5)
    assert big.layout.xaxis.tickfont.size == 1.5 * fig.layout.xaxis.tickfont.size == 16.5  # the tokens: 11 -> 16.5 px
    assert big.layout.font.size == 18 and big.layout.title.font.size == 1.5 * fig.layout.title.font.size
    assert big.layout.height == round(1.5 * fig.layout.height)
    lines = figures.scaled(figures.finished(summary()), 2)
    assert all(t.line.width == 4 and t.marker.size == 12 for t in lines.data)  # plotly's defaults, doubled
    notes = charts.summary_over_steps(pd.DataFrame({"checkpoint": ["base", "c"], "step": [0, 40], "accuracy": [1, 0.5]}),
                                      pd.DataFrame({"from_step": [0], "to_step": [40], "changed": [True],
                                                    "direction": ["detrimental"], "page_hinkley_alarm": [True]}))
    assert figures.scaled(notes, 2).layout.annotations[0].font.size == 2 * notes.layout.annotations[0].font.size


def test_larger_token_labels_are_thinned_so_that_they_still_fit_side_by_side():
    fig = heatmap(80)
    assert len(fig.layout.xaxis.ticktext) == 80
    big = figures.scaled(fig, 1.5)
    assert len(big.layout.xaxis.ticktext) == 40 and list(big.layout.xaxis.tickvals[:2]) == [0, 2]


def test_the_camera_saves_a_named_slide_sized_image():
    config = figures.plot_config(figures.file_name("sample_data", "heatmap-test-00012", "checkpoint-160"), "svg",
                                 heatmap())
    opts = config["toImageButtonOptions"]
    assert opts["filename"] == "sample_data-heatmap-test-00012-checkpoint-160"
    assert (opts["format"], opts["width"], opts["scale"]) == ("svg", figures.SLIDE_WIDTH, 1)
    assert figures.SLIDE_HEIGHT[0] <= opts["height"] <= figures.SLIDE_HEIGHT[1]
    assert figures.plot_config("x", "png", heatmap())["toImageButtonOptions"]["scale"] == 2
    assert figures.file_name("my world", "a/b", "") == "my-world-a-b"


def test_the_html_file_opens_offline_with_its_title_ticks_and_camera():
    fig = figures.finished(heatmap(10), "Token drift of test-1 · sample_data")
    page = figures.html_file(fig, figures.plot_config("sample_data-heatmap", "svg", fig))
    assert "<title>Token drift of test-1 · sample_data</title>" in page
    assert not re.search(r"<script[^>]+src=", page) and len(page) > 1_000_000  # plotly.js inlined: offline
    assert '"filename": "sample_data-heatmap"' in page or '"filename":"sample_data-heatmap"' in page
    spec = json.loads(re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{", page, re.S).group(2))
    assert spec["xaxis"]["automargin"] and spec["xaxis"]["ticktext"][0] == " t0"
    assert spec["xaxis"]["title"]["text"] == "token of the chain of thought"
