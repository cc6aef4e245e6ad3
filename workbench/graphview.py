"""HTML builders for the concept graph and counterfactual pages: pure functions of their input, tested directly.

    html = graph_html(graph, highlight="opacity")       # a self-contained pyvis page for components.html
    html = side_by_side_html(original, counterfactual)  # two columns, changed spans marked

Escaping. Node and edge data reach the pyvis page only as JSON written by jinja's ``tojson`` (which turns
``<``, ``>``, ``&`` and ``'`` into ``\\u003c`` ...), vis-network draws labels on a canvas and shows tooltips
with ``innerText``, so a node named ``<img src=x onerror=alert(1)>`` shows as that text and runs nothing.
Every label in markup written here goes through ``html.escape``. ``graph_html`` checks its own output and
refuses to return a page in which a label with markup characters appears raw.
"""

from __future__ import annotations

import html
import json
import re

import networkx as nx
import numpy as np
from pyvis.network import Network

from core.graph import concepts
from workbench.diffview import diff_html

COLORS = {"disease": "#4C72B0", "finding": "#DD8452", "supports": "#2CA02C", "excludes": "#D62728", "dim": "#D9D9D9"}
SHAPES = {"disease": "box", "finding": "ellipse"}
LABEL_SIZE = 20  # px at scale 1; vis-network's default 14 is unreadable once the whole graph is fitted
MIN_START_SCALE = 0.4  # the whole graph is fitted into the canvas; never drawn smaller than this (pan for the rest)
HEIGHT = 720  # px of the canvas: the 44-node sample graph fits at a readable scale
ASPECT = 1.35  # width / height of the canvas at the page's usual width: the layout is spread to these proportions
FILL = 0.4  # share of the layout's area that the labelled nodes cover (the rest: room for the edges)
# The layout is computed here (``layout``: deterministic, no labelled node on another) and drawn as it is; vis'
# own physics drew the hubs ("opacity", "clear lungs") on top of each other and pushed nodes out of the canvas.
OPTIONS = {"physics": {"enabled": False},
           "edges": {"arrows": {"to": {"enabled": True, "scaleFactor": 0.5}}, "smooth": False},
           "interaction": {"hover": True, "navigationButtons": False}}
# the pyvis template links bootstrap from a CDN; the workbench is offline, and the page does not need it
_CDN = re.compile(r"<link[^>]*cdn\.jsdelivr\.net[^>]*/>|<script[^>]*cdn\.jsdelivr\.net[^>]*>\s*</script>", re.S)


def neighbourhood(graph: nx.DiGraph, node) -> set:
    return {node} | set(graph.predecessors(node)) | set(graph.successors(node)) if node in graph else set()


def node_box(label: str, kind: str) -> tuple[float, float]:
    """The size of a drawn node at scale 1 (px): its label at ``LABEL_SIZE`` in a box (disease) or an ellipse
    (finding, wider and taller around the same text)."""
    text = 0.56 * LABEL_SIZE * len(label)
    return (text + 14, LABEL_SIZE + 12) if kind == "disease" else (text * 1.12 + 30, LABEL_SIZE + 20)


def layout(graph: nx.DiGraph, gap: float = 14.0, rounds: int = 300) -> dict:
    """Node -> (x, y) in canvas px at scale 1: the graph's shape from a force layout (networkx's Kamada-Kawai,
    deterministic), spread to ``ASPECT`` over an area the labelled nodes fill to ``FILL``, then every pair of
    labelled boxes that overlap pushed apart along the axis they overlap least, until none does (``gap`` px
    between them)."""
    nodes = list(graph)
    if len(nodes) < 2:
        return {n: (0.0, 0.0) for n in nodes}
    pos = nx.kamada_kawai_layout(graph.to_undirected())
    xy = np.array([pos[n] for n in nodes], dtype=float)  # (n, 2)
    sizes = np.array([node_box(str(graph.nodes[n].get("label", n)), graph.nodes[n].get("kind", "finding"))
                      for n in nodes]) + gap  # (n, 2)
    height = np.sqrt(np.prod(sizes, axis=1).sum() / FILL / ASPECT)
    span = np.ptp(xy, axis=0)
    xy = (xy - xy.min(axis=0)) / np.where(span > 0, span, 1.0)
    ranks = xy.argsort(axis=0).argsort(axis=0) / (len(nodes) - 1)  # each node's order along x and along y
    xy = ((xy + ranks) / 2 - 0.5) * [ASPECT * height, height]  # a dense core spread out, the order kept
    half = sizes / 2
    order = np.sign(np.arange(len(nodes))[:, None] - np.arange(len(nodes))[None, :])[..., None]  # ties: by index
    for _ in range(rounds):
        d = xy[:, None, :] - xy[None, :, :]  # (n, n, 2): from j to i
        over = half[:, None, :] + half[None, :, :] - np.abs(d)  # (n, n, 2): overlap along x and y
        hit = (over > 0).all(axis=-1)
        np.fill_diagonal(hit, False)
        if not hit.any():
            break
        least = np.arange(2) == over.argmin(axis=-1)[..., None]  # (n, n, 2): the axis to separate along
        direction = np.where(d != 0, np.sign(d), order)
        xy += (np.where(least & hit[..., None], over / 2 + 0.5, 0.0) * direction).sum(axis=1)
    return {n: (float(x), float(y)) for n, (x, y) in zip(nodes, xy, strict=True)}


def graph_html(graph: nx.DiGraph, highlight: str | None = None, height: int = HEIGHT) -> str:
    """A pyvis page of ``graph``: diseases as boxes, findings as ellipses, supports green, excludes red
    (dashed), edge width by weight, laid out by ``layout`` (no labelled node on another) and fitted into the
    canvas; with ``highlight``, that node's neighbourhood in colour, the rest grey."""
    near = neighbourhood(graph, highlight) if highlight is not None else set(graph)
    net = Network(height=f"{height}px", width="100%", directed=True, cdn_resources="in_line")
    at = layout(graph)
    for node, a in graph.nodes(data=True):
        kind = a.get("kind", "finding")
        net.add_node(str(node), label=str(a.get("label", node)), title=_tooltip(graph, node),
                     x=at[node][0], y=at[node][1],
                     shape=SHAPES.get(kind, "ellipse"), color=COLORS[kind] if node in near else COLORS["dim"],
                     font={"color": "#ffffff" if kind == "disease" and node in near else "#222222",
                           "size": LABEL_SIZE},
                     borderWidth=3 if node == highlight else 1)
    for u, v, a in graph.edges(data=True):
        rel, w = a.get("relation"), float(a.get("weight", 1.0))
        lit = u in near and v in near
        net.add_edge(str(u), str(v), color=COLORS.get(rel, "#888888") if lit else COLORS["dim"], width=1 + 5 * w,
                     dashes=rel == "excludes", title=f"{a.get('label', u)} {rel} {v} ({w:g})")
    net.set_options(json.dumps(OPTIONS))
    page = _CDN.sub("", net.generate_html(notebook=False))
    # once drawn (or at once, if it was drawn before this script ran): the whole graph fitted into the canvas
    page = page.replace("</body>", "<script>var wbZoomed = false; function wbZoom() { if (wbZoomed) return; "
                        "wbZoomed = true; network.fit({animation: false}); "
                        f"if (network.getScale() < {MIN_START_SCALE}) network.moveTo({{scale: {MIN_START_SCALE}}}); }}"
                        "network.once('afterDrawing', wbZoom); setTimeout(wbZoom, 300);</script></body>", 1)
    if highlight in graph:
        page = page.replace("</body>", f"<script>network.selectNodes([{_js(str(highlight))}]);</script></body>", 1)
    _check_escaped(graph, page)
    return page


def _tooltip(graph: nx.DiGraph, node) -> str:
    """Plain text (vis-network shows titles with innerText)."""
    a = graph.nodes[node]
    lines = [f"{a.get('label', node)} ({a.get('kind')})"]
    if a.get("synonyms"):
        lines.append("synonyms: " + ", ".join(a["synonyms"]))
    if a.get("description"):
        lines.append(a["description"])
    return "\n".join(lines)


def _js(value: str) -> str:
    """A JSON string literal that is safe inside a <script> element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _check_escaped(graph: nx.DiGraph, page: str) -> None:
    for node in graph:
        for name in concepts.names(graph, node) + [str(node)]:
            if re.search(r"[<>&]", name) and name in page:
                raise ValueError(f"graph view: label {name!r} would reach the page unescaped")


def legend_html(graph: nx.DiGraph, version: int, highlight: str | None = None) -> str:
    """The key to the drawing, and what is highlighted (escaped)."""
    items = [f"<span style='color:{COLORS['disease']}'>■</span> disease ({len(concepts.diseases(graph))})",
             f"<span style='color:{COLORS['finding']}'>●</span> finding ({len(concepts.findings(graph))})",
             f"<span style='color:{COLORS['supports']}'>━</span> supports",
             f"<span style='color:{COLORS['excludes']}'>┅</span> excludes", f"version {int(version)}"]
    if highlight is not None:
        items.append(f"highlighted: <b>{html.escape(str(highlight))}</b> and its neighbours")
    return " &nbsp;·&nbsp; ".join(items)


def side_by_side_html(original: str, counterfactual: str) -> str:
    """Original and counterfactual in two columns; changed spans struck out (left) and marked (right)."""
    left, right = diff_html(original, counterfactual, removed=("<del style='background:#fdd'>", "</del>"),
                            added=("<mark style='background:#cfc'>", "</mark>"))
    cell = "vertical-align:top;padding:8px;border:1px solid #ddd;width:50%;font-family:monospace;white-space:pre-wrap"
    return ("<table style='width:100%;border-collapse:collapse' class='cf-diff'><tr>"
            "<th style='text-align:left'>original</th><th style='text-align:left'>counterfactual</th></tr><tr>"
            f"<td style='{cell}'>{left}</td><td style='{cell}'>{right}</td></tr></table>")
