"""The concept graph: diseases and radiographic findings, linked by "supports" and "excludes" edges.

A ``networkx.DiGraph`` whose nodes carry ``kind`` ("disease" | "finding"), ``label``, ``synonyms`` and
``description``, and whose edges run finding -> disease with ``relation`` ("supports" | "excludes") and
``weight``. Stored as node-link JSON::

    g = load_graph("sample_data/concept_graph.json")
    validate(g)            # [] when well-formed, else one message per problem
    save_graph(g, path)
"""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx

from core.errors import InputError

KINDS = ("disease", "finding")
RELATIONS = ("supports", "excludes")


def load_graph(path: str | Path) -> nx.DiGraph:
    """Read a node-link JSON concept graph; raise ``InputError`` naming the file and the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: concept graph file not found (expected node-link JSON)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or "nodes" not in data or "edges" not in data:
        raise InputError(f"{path}: expected a node-link object with 'nodes' and 'edges' lists")
    try:
        graph = nx.node_link_graph(data, directed=True, multigraph=False, edges="edges")
    except (KeyError, TypeError, nx.NetworkXError) as e:
        raise InputError(f"{path}: malformed node-link data ({e!r})") from None
    problems = validate(graph)
    if problems:
        raise InputError(f"{path}: invalid concept graph: " + "; ".join(problems[:5]))
    return graph


def save_graph(graph: nx.DiGraph, path: str | Path) -> None:
    """Write node-link JSON atomically (temporary file renamed into place)."""
    from core.cache import atomic_write_text

    data = nx.node_link_data(graph, edges="edges")
    atomic_write_text(Path(path), json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def validate(graph: nx.DiGraph) -> list[str]:
    """Problems with the graph, one readable message each (empty list when valid)."""
    problems = []
    for node, attrs in graph.nodes(data=True):
        if attrs.get("kind") not in KINDS:
            problems.append(f"node {node!r}: kind must be one of {KINDS}, got {attrs.get('kind')!r}")
        syn = attrs.get("synonyms", [])
        if not isinstance(syn, list) or not all(isinstance(x, str) and x.strip() for x in syn):
            problems.append(f"node {node!r}: synonyms must be a list of non-empty strings, got {syn!r}")
    for u, v, attrs in graph.edges(data=True):
        if u == v:
            problems.append(f"edge {u!r} -> {v!r}: self-loop")
        if attrs.get("relation") not in RELATIONS:
            problems.append(f"edge {u!r} -> {v!r}: relation must be one of {RELATIONS}, got {attrs.get('relation')!r}")
    return problems


def diseases(graph: nx.DiGraph) -> list[str]:
    return [n for n, a in graph.nodes(data=True) if a.get("kind") == "disease"]


def findings(graph: nx.DiGraph) -> list[str]:
    return [n for n, a in graph.nodes(data=True) if a.get("kind") == "finding"]
