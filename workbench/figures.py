"""One figure for three audiences: the page, a projector (presentation mode) and a file (HTML, PNG, SVG).

The chart builders (``charts``, ``visual_charts``) draw for the page; what every figure needs on its way out is
done here, once, as pure functions tested directly:

    fig = finished(fig, "Token drift of test-00012 · sample_data")  # a title; ticks and titles make room
    fig = scaled(fig, PRESENTATION_SCALE)      # presentation mode: fonts, markers, lines and height grow
    config = plot_config("sample_data-heatmap-test-00012", "svg", fig)   # the camera button: named, slide-sized
    page = html_file(fig, config)              # the self-contained "Interactive HTML" download (works offline)

Why: plotly lays out tick labels and axis titles in fixed margins unless ``automargin`` is on, so a figure
drawn at another size or font (a file, a projector) cut its tokens and category names; a legend placed below
the plot in paper units (``y=-0.25``) lands on the x-axis title when the height changes. ``LEGEND_BELOW``
anchors the legend to the bottom of the whole figure (container units), where it pushes the plot up instead.
"""

from __future__ import annotations

import html
import re

import plotly.graph_objects as go

LEGEND_BELOW = {"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0, "xanchor": "left"}
PRESENTATION_SCALE = 1.5  # fonts, markers and lines on a projector (the page's type grows by 1.25)
BASE_FONT = 12  # plotly's default font size: what a figure without its own is drawn with
SLIDE_WIDTH = 1280  # px of a PNG / SVG from the camera button (a 16:9 slide is 1280 x 720)
SLIDE_HEIGHT = (420, 720)  # the figure's own height, kept within these
TOKEN_TICKS = 80  # rotated token labels that fit side by side across a chart at the base font
LEGEND_WRAP = 34  # characters of a legend entry before it wraps (long ones were cut at the figure's edge)
TITLE_WRAP = 60  # characters of a title line: one fits a half-page chart at the presentation size


def _axes(fig: go.Figure) -> list:
    """Every x and y axis of the layout (subplots and the explorer's minimap strip included)."""
    return [fig.layout[k] for k in fig.layout if re.fullmatch(r"[xy]axis\d*", k)]


def finished(fig: go.Figure, title: str = "") -> go.Figure:
    """A copy of ``fig`` ready to leave the page: every axis makes room for its tick labels and title
    (``automargin``), long legend entries wrap instead of running off the edge, and ``title`` (plain text,
    escaped here) says what the figure shows. Figures may come from a shared cache: never changed in place."""
    fig = go.Figure(fig)
    for axis in _axes(fig):
        axis.automargin = True
    for trace in fig.data:
        if trace.name and len(trace.name) > LEGEND_WRAP and "<br>" not in trace.name:
            trace.name = wrap(trace.name)
    if title:
        # above the plot, pushing the top margin as high as its lines need (a long title wraps instead of
        # running off the figure); its padding below leaves a line for labels drawn above the plot
        text = wrap(html.escape(title, quote=False), TITLE_WRAP)
        fig.update_layout(title={"text": text, "x": 0, "xanchor": "left", "xref": "container", "yref": "paper",
                                 "automargin": True, "pad": {"l": 8, "b": 18}, "font": {"size": BASE_FONT + 3}})
    return fig


def wrap(text: str, width: int = LEGEND_WRAP) -> str:
    """``text`` broken into lines of about ``width`` characters at spaces (plotly's ``<br>``)."""
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "<br>".join([*lines, line])


def scaled(fig: go.Figure, k: float) -> go.Figure:
    """A copy of ``fig`` for a projector: every font (tick labels, axis and figure titles, legend, annotations,
    colour bars, text on cells, hover labels), marker and line width times ``k``, its height and margins too,
    and token axes labelled every n-th token where ``k`` times more labels would no longer fit side by side.
    Each font is set explicitly: a size left to the template (Streamlit's theme sets its own) would not grow."""
    fig = go.Figure(fig)
    lay = fig.layout
    fig.update_layout(font={"size": (lay.font.size or BASE_FONT) * k}, hoverlabel={"font": {"size": 13 * k}},
                      legend={"font": {"size": (lay.legend.font.size or BASE_FONT) * k}})
    if lay.height:
        fig.update_layout(height=round(lay.height * k))
    fig.update_layout(margin={side: round(getattr(lay.margin, side) * k) for side in "tlrb"
                              if getattr(lay.margin, side) is not None})
    lay.title.font.size = (lay.title.font.size or BASE_FONT + 3) * k
    if lay.title.text:  # k times larger letters: k times fewer on a line
        lay.title.text = wrap(lay.title.text.replace("<br>", " "), int(TITLE_WRAP / k))
    for axis in _axes(fig):
        axis.tickfont.size = (axis.tickfont.size or BASE_FONT) * k
        axis.title.font.size = (axis.title.font.size or BASE_FONT + 1) * k
        _thin_ticks(axis, k)
    for note in lay.annotations:
        note.font.size = (note.font.size or BASE_FONT) * k
    for slider in lay.sliders:
        slider.font.size = (slider.font.size or BASE_FONT) * k
    for trace in fig.data:
        _scale_trace(trace, k)
    return fig


def _thin_ticks(axis, k: float) -> None:
    """A token axis (labels given as arrays) keeps every n-th label so that ``k`` times larger ones fit."""
    if axis.tickmode != "array" or axis.tickvals is None or axis.ticktext is None:
        return
    every = -(-round(len(axis.tickvals) * k) // TOKEN_TICKS)
    if every > 1:
        axis.tickvals, axis.ticktext = axis.tickvals[::every], axis.ticktext[::every]


def _scale_trace(trace, k: float) -> None:
    marker = getattr(trace, "marker", None)
    if marker is not None and getattr(marker, "size", None) is not None:
        size = marker.size
        marker.size = [s * k for s in size] if isinstance(size, (list, tuple)) else size * k
    elif trace.type == "scatter" and "markers" in (trace.mode or ""):
        marker.size = 6 * k  # plotly's default size, drawn larger
    line = getattr(trace, "line", None)
    if line is not None and getattr(line, "width", None) is not None:
        line.width *= k
    elif line is not None and trace.type == "scatter":
        line.width = 2 * k  # plotly's default width, drawn thicker
    textfont = getattr(trace, "textfont", None)
    if textfont is not None and textfont.size:
        textfont.size *= k
    if getattr(trace, "colorbar", None) is not None:
        for font in (trace.colorbar.tickfont, trace.colorbar.title.font):
            font.size = (font.size or BASE_FONT) * k


def slide_size(fig: go.Figure) -> tuple[int, int]:
    """Width and height of an image from the camera button: a slide's width, the figure's own proportions
    within ``SLIDE_HEIGHT`` (a heatmap of 7 checkpoints stays a band, a line chart gets room)."""
    lo, hi = SLIDE_HEIGHT
    return SLIDE_WIDTH, int(min(hi, max(lo, (fig.layout.height or 450) * 1.25)))


def file_name(*parts: str) -> str:
    """A file name that says what the figure is: world, view and what was picked (trajectory, checkpoint)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(p for p in parts if p)).strip("-.") or "figure"


def plot_config(name: str, fmt: str, fig: go.Figure) -> dict:
    """Plotly's config for a figure: the camera button saves ``fmt`` (png | svg) as ``name`` at a slide's
    size (PNG at twice the pixels), drawn by the browser itself (no server-side renderer, works offline)."""
    width, height = slide_size(fig)
    return {"displaylogo": False,
            "toImageButtonOptions": {"format": fmt, "filename": name, "width": width, "height": height,
                                     "scale": 2 if fmt == "png" else 1}}


def html_file(fig: go.Figure, config: dict) -> str:
    """A self-contained interactive page of ``fig`` (plotly.js inlined: it opens offline): white background,
    the figure's title as the page's, and the same camera button as on the page."""
    page = go.Figure(fig).update_layout(template="plotly_white")
    title = re.sub(r"<[^>]+>", " ", fig.layout.title.text or "figure")
    text = page.to_html(include_plotlyjs=True, full_html=True, config=config, default_width="100%")
    return text.replace("<head>", f"<head><title>{title}</title>", 1)
