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
from pyvis.network import Network

from core.graph import concepts
from workbench.diffview import diff_html

COLORS = {"disease": "#4C72B0", "finding": "#DD8452", "supports": "#2CA02C", "excludes": "#D62728", "dim": "#D9D9D9"}
SHAPES = {"disease": "box", "finding": "ellipse"}
LABEL_SIZE = 20  # px at scale 1; vis-network's default 14 is unreadable once the whole graph is fitted
MIN_START_SCALE = 0.7  # after the layout settles, zoom in to at least this (labels of ~14 px); pan for the rest
OPTIONS = {"physics": {"barnesHut": {"gravitationalConstant": -9000, "springLength": 110},
                       "stabilization": {"iterations": 150}},
           "edges": {"arrows": {"to": {"enabled": True, "scaleFactor": 0.5}}, "smooth": False},
           "interaction": {"hover": True, "navigationButtons": False}}
# the pyvis template links bootstrap from a CDN; the workbench is offline, and the page does not need it
_CDN = re.compile(r"<link[^>]*cdn\.jsdelivr\.net[^>]*/>|<script[^>]*cdn\.jsdelivr\.net[^>]*>\s*</script>", re.S)


def neighbourhood(graph: nx.DiGraph, node) -> set:
    return {node} | set(graph.predecessors(node)) | set(graph.successors(node)) if node in graph else set()


def graph_html(graph: nx.DiGraph, highlight: str | None = None, height: int = 560) -> str:
    """A pyvis page of ``graph``: diseases as boxes, findings as ellipses, supports green, excludes red
    (dashed), edge width by weight; with ``highlight``, that node's neighbourhood in colour, the rest grey."""
    near = neighbourhood(graph, highlight) if highlight is not None else set(graph)
    net = Network(height=f"{height}px", width="100%", directed=True, cdn_resources="in_line")
    for node, a in graph.nodes(data=True):
        kind = a.get("kind", "finding")
        net.add_node(str(node), label=str(a.get("label", node)), title=_tooltip(graph, node),
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
    # whichever comes first after the fit (stabilisation may end before this script runs): zoom in once
    page = page.replace("</body>", "<script>var wbZoomed = false; function wbZoom() { if (wbZoomed) return; "
                        f"wbZoomed = true; if (network.getScale() < {MIN_START_SCALE}) "
                        f"network.moveTo({{scale: {MIN_START_SCALE}}}); }}"
                        "network.once('stabilizationIterationsDone', wbZoom); network.once('stabilized', wbZoom); "
                        "setTimeout(wbZoom, 1500);</script></body>", 1)
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
