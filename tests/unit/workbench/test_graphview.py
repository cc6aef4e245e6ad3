"""The concept graph's drawing (``workbench.graphview``): a layout in which no labelled node covers another."""

import json
import re

import networkx as nx
import numpy as np

from core.graph import concepts
from tests.conftest import ROOT
from workbench import graphview


def boxes(graph, at) -> np.ndarray:
    """(n, 4) x0, y0, x1, y1 of each drawn node at scale 1."""
    out = []
    for n in graph:
        w, h = graphview.node_box(str(graph.nodes[n].get("label", n)), graph.nodes[n].get("kind", "finding"))
        x, y = at[n]
        out.append((x - w / 2, y - h / 2, x + w / 2, y + h / 2))
    return np.array(out)


def overlapping(b: np.ndarray) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(b)) for j in range(i + 1, len(b))
            if b[i, 0] < b[j, 2] and b[j, 0] < b[i, 2] and b[i, 1] < b[j, 3] and b[j, 1] < b[i, 3]]


def test_the_sample_graph_is_laid_out_with_no_node_on_another_in_the_canvas_proportions():
    graph = concepts.load_graph(ROOT / "sample_data" / "concept_graph.json")
    at = graphview.layout(graph)
    b = boxes(graph, at)
    assert overlapping(b) == []  # "opacity" and "clear lungs", the hubs, were drawn on top of each other
    width, height = b[:, 2].max() - b[:, 0].min(), b[:, 3].max() - b[:, 1].min()
    assert 0.8 * graphview.ASPECT < width / height < 1.6 * graphview.ASPECT
    assert graphview.layout(graph) == at  # deterministic: the same drawing on every rerun


def test_a_larger_graph_with_long_labels_and_isolated_nodes_does_not_overlap_either():
    graph = nx.gnm_random_graph(90, 140, seed=1, directed=True)
    graph.add_nodes_from(range(90, 96))  # isolated nodes
    nx.set_node_attributes(graph, {n: {"label": f"finding number {n} " + "x" * (n % 17),
                                       "kind": "disease" if n % 5 == 0 else "finding"} for n in graph})
    b = boxes(graph, graphview.layout(graph))
    assert overlapping(b) == []


def test_the_page_draws_the_layout_as_it_is_and_fits_it_into_the_canvas():
    graph = concepts.load_graph(ROOT / "sample_data" / "concept_graph.json")
    page = graphview.graph_html(graph)
    nodes = json.loads(re.search(r"nodes = new vis\.DataSet\((\[.*?\])\);", page, re.S).group(1))
    at = graphview.layout(graph)
    assert all((n["x"], n["y"]) == at[n["id"]] for n in nodes)
    assert '"physics": {"enabled": false}' in page and "network.fit(" in page
