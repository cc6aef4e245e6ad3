"""Import and export of concept graphs: node-link JSON, GraphML and CSV edge lists.

    data = export_graph(g, "graphml")                      # bytes, ready for a download button or a file
    g2 = import_graph(data, "concepts.graphml")            # format from the file name; InputError names the
                                                           # file, the line or item, and the field
    import_graph(csv_bytes, "edges.csv", base=g)           # a CSV edge list takes node attributes from ``base``

GraphML holds no lists, so ``synonyms`` travel as a JSON string attribute. A CSV edge list
(``source,target,relation,weight``) holds no node attributes: its sources become findings and its targets
diseases (labelled by their id), unless ``base`` knows them.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET

import networkx as nx

from core.errors import InputError
from core.graph import concepts
from core.io import jsonsafe

FORMATS = {"json": "node-link JSON", "graphml": "GraphML", "csv": "CSV edge list"}
CSV_FIELDS = ("source", "target", "relation", "weight")


def format_of(filename: str) -> str:
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    fmt = {"json": "json", "graphml": "graphml", "xml": "graphml", "csv": "csv"}.get(ext)
    if fmt is None:
        raise InputError(f"{filename}: unknown graph format (expected .json node-link, .graphml or .csv)")
    return fmt


def export_graph(graph: nx.DiGraph, fmt: str) -> bytes:
    """The graph in ``fmt`` ("json" | "graphml" | "csv") as UTF-8 bytes."""
    if fmt == "json":
        return (json.dumps(concepts.to_node_link(graph), indent=1, ensure_ascii=False) + "\n").encode()
    if fmt == "graphml":
        return to_graphml(graph).encode()
    if fmt == "csv":
        return to_csv(graph).encode()
    raise InputError(f"export: format must be one of {sorted(FORMATS)}, got {fmt!r}")


def import_graph(data: bytes, filename: str, base: nx.DiGraph | None = None) -> nx.DiGraph:
    """A checked concept graph from file bytes; the format is chosen by ``filename``'s extension."""
    fmt = format_of(filename)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{filename}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if fmt == "json":
        return concepts.from_node_link(jsonsafe.loads(text, filename), filename)
    if fmt == "graphml":
        return from_graphml(text, filename)
    return from_csv(text, filename, base)


def to_graphml(graph: nx.DiGraph) -> str:
    g = graph.copy()
    for _, attrs in g.nodes(data=True):
        attrs["synonyms"] = json.dumps(attrs.get("synonyms", []), ensure_ascii=False)
    for key in list(g.graph):
        if not isinstance(g.graph[key], (str, int, float, bool)):
            del g.graph[key]
    return "\n".join(nx.generate_graphml(g, named_key_ids=True)) + "\n"


def from_graphml(text: str, source: str = "graph.graphml") -> nx.DiGraph:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise InputError(f"{source}: not valid XML ({e})") from None
    edges = [(el.get("source"), el.get("target"), _graphml_relation(el), f"edge {k + 1}")
             for k, el in enumerate(root.iter("{http://graphml.graphdrawing.org/xmlns}edge"))]
    concepts.check_edge_list(edges, source)
    try:
        g = nx.parse_graphml(text, force_multigraph=False)
    except (nx.NetworkXError, ET.ParseError, ValueError, KeyError) as e:
        raise InputError(f"{source}: malformed GraphML ({e})") from None
    if not g.is_directed():
        raise InputError(f"{source}: the graph must be directed (edgedefault=\"directed\")")
    g = nx.DiGraph(g)
    for node, attrs in g.nodes(data=True):
        raw = attrs.get("synonyms", "[]")
        try:
            attrs["synonyms"] = json.loads(raw) if isinstance(raw, str) else raw
        except (ValueError, RecursionError):  # malformed, nested too deep, a number too long
            raise InputError(f"{source}: node {node!r}: field 'synonyms' must be a JSON list, got {raw[:80]!r}") from None
    concepts.raise_if_invalid(g, source)
    return g


def _graphml_relation(el: ET.Element) -> str | None:
    for data in el.iter("{http://graphml.graphdrawing.org/xmlns}data"):
        if data.get("key") == "relation":
            return data.text
    return None


def to_csv(graph: nx.DiGraph) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for u, v, a in graph.edges(data=True):
        w.writerow([u, v, a.get("relation"), repr(float(a.get("weight", 1.0)))])
    return buf.getvalue()


def _rows(reader: csv.DictReader, source: str):
    """``(line, row)`` of ``reader``; a field over the csv module's limit (128 KiB) or a broken quote is an
    ``InputError`` naming the line, not a ``_csv.Error``."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            # line_num counts the lines read whole: the bad row is the next one
            raise InputError(f"{source}, line {reader.line_num + 1}: not a valid CSV row ({e}; a concept graph's fields "
                             "are names and relations, not long text)") from None
        yield reader.line_num, row


def from_csv(text: str, source: str = "edges.csv", base: nx.DiGraph | None = None) -> nx.DiGraph:
    """A graph from a CSV edge list; node attributes come from ``base`` where it has the node."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [f for f in CSV_FIELDS[:3] if f not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{source}, line 1: missing column(s) {missing} (expected header {','.join(CSV_FIELDS)})")
    rows = []
    for line, row in _rows(reader, source):
        for f in CSV_FIELDS[:3]:
            if not (row.get(f) or "").strip():
                raise InputError(f"{source}, line {line}: field '{f}' is empty")
        try:
            weight = float(row.get("weight") or 1.0)
        except ValueError:
            raise InputError(f"{source}, line {line}: field 'weight' must be a number, got {row['weight']!r}") from None
        rows.append((row["source"].strip(), row["target"].strip(), row["relation"].strip(), weight, f"line {line}"))
    concepts.check_edge_list([(u, v, r, where) for u, v, r, _, where in rows], source)
    g = nx.DiGraph(**(base.graph if base is not None else {}))
    for u, v, relation, weight, _ in rows:
        for node, kind in ((u, "finding"), (v, "disease")):
            if node not in g:
                known = base is not None and node in base
                g.add_node(node, **(dict(base.nodes[node]) if known else
                                    {"kind": kind, "label": node, "synonyms": [], "description": ""}))
        g.add_edge(u, v, relation=relation, weight=weight)
    concepts.raise_if_invalid(g, source)
    return g
