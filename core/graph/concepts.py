"""The concept graph: diseases and radiographic findings, linked by "supports" and "excludes" edges.

A ``networkx.DiGraph`` whose nodes carry ``kind`` ("disease" | "finding"), ``label``, ``synonyms`` and
``description``, and whose edges run finding -> disease with ``relation`` ("supports" | "excludes") and
``weight`` in [0, 1]. Stored as node-link JSON (GraphML and CSV edge lists in ``core.graph.formats``)::

    g = load_graph("sample_data/concept_graph.json")
    validate(g)            # [] when well-formed, else one message per problem
    g2 = apply_edit(g, {"op": "set_edge", "source": "opacity", "target": "Edema", "relation": "supports",
                        "weight": 0.4})                   # a new graph; InputError if the edit is invalid
    diff_graphs(g, g2).rows()                             # what changed, one row per node / edge
    synonym_sets(g)        # {"opacity": ["opacity", "lung opacity"], ...} for near-synonym swaps
    save_graph(g2, path)

Edits never change their input: ``apply_edit`` returns a new graph, so a versioned store
(``core.graph.store``) can keep every version.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

from core.errors import InputError
from core.io import jsonsafe

KINDS = ("disease", "finding")
RELATIONS = ("supports", "excludes")


def load_graph(path: str | Path) -> nx.DiGraph:
    """Read a node-link JSON concept graph; raise ``InputError`` naming the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: concept graph file not found (expected node-link JSON)") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    data = jsonsafe.loads(text, str(path))  # also deep nesting and huge integers, with the line
    return from_node_link(data, str(path))


def from_node_link(data: object, source: str = "graph") -> nx.DiGraph:
    """A checked graph from node-link data (``{"nodes": [...], "edges": [...]}``); ``source`` names it in errors."""
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or not isinstance(data.get("edges"), list):
        raise InputError(f"{source}: expected a node-link object with 'nodes' and 'edges' lists")
    for i, node in enumerate(data["nodes"]):
        if not isinstance(node, dict) or "id" not in node:
            raise InputError(f"{source}: nodes[{i}]: expected an object with an 'id'")
    pairs = []
    for i, edge in enumerate(data["edges"]):
        if not isinstance(edge, dict) or "source" not in edge or "target" not in edge:
            raise InputError(f"{source}: edges[{i}]: expected an object with 'source' and 'target'")
        pairs.append((edge["source"], edge["target"], edge.get("relation"), f"edges[{i}]"))
    check_edge_list(pairs, source)
    try:
        graph = nx.node_link_graph(data, directed=True, multigraph=False, edges="edges")
    except (KeyError, TypeError, nx.NetworkXError) as e:
        raise InputError(f"{source}: malformed node-link data ({e!r})") from None
    raise_if_invalid(graph, source)
    return graph


def to_node_link(graph: nx.DiGraph) -> dict:
    return nx.node_link_data(graph, edges="edges")


def save_graph(graph: nx.DiGraph, path: str | Path) -> None:
    """Write node-link JSON atomically (temporary file renamed into place)."""
    from core.io.cache import atomic_write_text

    atomic_write_text(Path(path), json.dumps(to_node_link(graph), indent=1, ensure_ascii=False) + "\n")


def check_edge_list(edges: list[tuple], source: str) -> None:
    """Refuse an edge list that names one pair twice: a DiGraph would silently keep only the last edge.

    ``edges``: ``(source, target, relation, where)`` tuples, ``where`` naming the item ("edges[3]", "line 4").
    """
    seen: dict[tuple, tuple] = {}
    for u, v, relation, where in edges:
        if (u, v) in seen:
            other_rel, other_where = seen[(u, v)]
            if other_rel != relation and {other_rel, relation} == set(RELATIONS):
                raise InputError(f"{source}: {where}: finding {u!r} both supports and excludes {v!r} "
                                 f"(also {other_where}); keep one of the two edges")
            raise InputError(f"{source}: {where}: duplicate edge {u!r} -> {v!r} (also {other_where})")
        seen[(u, v)] = (relation, where)


def validate(graph: nx.DiGraph) -> list[str]:
    """Problems with the graph, one readable message each (empty list when valid)."""
    problems = []
    for node, attrs in graph.nodes(data=True):
        problems += _node_problems(graph, node, attrs)
    for u, v, attrs in graph.edges(data=True):
        problems += _edge_problems(graph, u, v, attrs)
    return problems + _duplicate_names(graph)


def raise_if_invalid(graph: nx.DiGraph, source: str = "concept graph") -> None:
    problems = validate(graph)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InputError(f"{source}: invalid concept graph: " + "; ".join(problems[:5]) + more)


def _node_problems(graph: nx.DiGraph, node, attrs: dict) -> list[str]:
    if "kind" not in attrs and graph.degree(node) > 0:
        edge = next(iter(graph.in_edges(node))) if graph.in_degree(node) else next(iter(graph.out_edges(node)))
        return [f"edge {edge[0]!r} -> {edge[1]!r}: unknown node {node!r} (declare it as a disease or finding first)"]
    out = []
    if attrs.get("kind") not in KINDS:
        out.append(f"node {node!r}: kind must be one of {KINDS}, got {attrs.get('kind')!r}")
    if not isinstance(attrs.get("label", node), str) or not str(attrs.get("label", node)).strip():
        out.append(f"node {node!r}: label must be a non-empty string, got {attrs.get('label')!r}")
    syn = attrs.get("synonyms", [])
    if not isinstance(syn, list) or not all(isinstance(x, str) and x.strip() for x in syn):
        out.append(f"node {node!r}: synonyms must be a list of non-empty strings, got {syn!r}")
    if not isinstance(attrs.get("description", ""), str):
        out.append(f"node {node!r}: description must be text, got {attrs.get('description')!r}")
    return out


def _edge_problems(graph: nx.DiGraph, u, v, attrs: dict) -> list[str]:
    out = []
    if u == v:
        out.append(f"edge {u!r} -> {v!r}: self-loop")
    if attrs.get("relation") not in RELATIONS:
        out.append(f"edge {u!r} -> {v!r}: relation must be one of {RELATIONS}, got {attrs.get('relation')!r}")
    w = attrs.get("weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not (0.0 <= w <= 1.0):
        out.append(f"edge {u!r} -> {v!r}: weight must be a number in [0, 1], got {w!r}")
    kinds = (graph.nodes[u].get("kind"), graph.nodes[v].get("kind"))
    if u != v and all(k in KINDS for k in kinds) and kinds != ("finding", "disease"):
        out.append(f"edge {u!r} -> {v!r}: must run from a finding to a disease, got {kinds[0]} -> {kinds[1]}")
    return out


def _duplicate_names(graph: nx.DiGraph) -> list[str]:
    """A name (label or synonym, case-insensitive) may belong to one node of each kind only."""
    owner: dict[tuple[str, str], object] = {}
    out = []
    for node, attrs in graph.nodes(data=True):
        if not isinstance(attrs.get("synonyms", []), list):
            continue  # reported by _node_problems
        for name in {n.strip().lower() for n in names(graph, node)}:
            key = (attrs.get("kind"), name)
            if key in owner and owner[key] != node:
                out.append(f"synonym {name!r} belongs to both {owner[key]!r} and {node!r}")
            owner.setdefault(key, node)
    return out


def names(graph: nx.DiGraph, node) -> list[str]:
    """The node's label and synonyms, label first, without repeats."""
    attrs = graph.nodes[node]
    out = [str(attrs.get("label", node))] + [s for s in attrs.get("synonyms", []) if isinstance(s, str)]
    return list(dict.fromkeys(out))


def diseases(graph: nx.DiGraph) -> list[str]:
    return [n for n, a in graph.nodes(data=True) if a.get("kind") == "disease"]


def findings(graph: nx.DiGraph) -> list[str]:
    return [n for n, a in graph.nodes(data=True) if a.get("kind") == "finding"]


def synonym_sets(graph: nx.DiGraph) -> dict[str, list[str]]:
    """Finding node id -> its label and synonyms (label first): the near-synonym swaps of a perturbation test."""
    return {f: names(graph, f) for f in findings(graph)}


def search(graph: nx.DiGraph, query: str) -> list:
    """Nodes whose id, label or a synonym contains ``query`` (any case); exact matches first."""
    q = query.strip().lower()
    if not q:
        return []
    hits = [n for n in graph if any(q in name.lower() for name in names(graph, n) + [str(n)])]
    return sorted(hits, key=lambda n: (q not in [x.lower() for x in names(graph, n)], str(n)))


def related(graph: nx.DiGraph, disease: str, relation: str) -> dict[str, float]:
    """Findings with a ``relation`` edge to ``disease`` -> edge weight, heaviest first."""
    pairs = [(u, float(a.get("weight", 1.0))) for u, _, a in graph.in_edges(disease, data=True)
             if a.get("relation") == relation]
    return dict(sorted(pairs, key=lambda p: (-p[1], str(p[0]))))


def confusable(graph: nx.DiGraph, disease: str) -> list[str]:
    """Diseases that share a supporting finding with ``disease``, most overlap first.

    Overlap = sum over shared supporting findings of min(weight to ``disease``, weight to the other).
    """
    mine = related(graph, disease, "supports")
    scores = {}
    for other in diseases(graph):
        if other != disease:
            theirs = related(graph, other, "supports")
            shared = sum(min(w, theirs[f]) for f, w in mine.items() if f in theirs)
            if shared > 0:
                scores[other] = shared
    return sorted(scores, key=lambda d: (-scores[d], str(d)))


def serialise(graph: nx.DiGraph, focus: list[str] | None = None) -> str:
    """The graph as text lines for a language model: "finding (also: a, b) supports Disease (0.9)".

    ``focus``: only edges into these diseases (the whole graph when None).
    """
    lines = []
    for u, v, a in sorted(graph.edges(data=True), key=lambda e: (str(e[1]), str(e[0]))):
        if focus is None or v in focus:
            syn = [s for s in names(graph, u)[1:]]
            also = f" (also: {', '.join(syn)})" if syn else ""
            lines.append(f"{names(graph, u)[0]}{also} {a.get('relation')} {names(graph, v)[0]} "
                         f"({float(a.get('weight', 1.0)):g})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- edits

def apply_edit(graph: nx.DiGraph, op: dict) -> nx.DiGraph:
    """A new graph with the edit ``op`` applied (see ``EDITS``); ``InputError`` says why an edit is refused."""
    kind = op.get("op") if isinstance(op, dict) else None
    if kind not in EDITS:
        raise InputError(f"edit: 'op' must be one of {sorted(EDITS)}, got {kind!r}")
    new = graph.copy()
    EDITS[kind](new, op)
    raise_if_invalid(new, f"edit {describe_edit(op)!r}")
    return new


def describe_edit(op: dict) -> str:
    """One line for the version history."""
    k = op.get("op")
    if k == "set_edge":
        return f"{op.get('source')} {op.get('relation')} {op.get('target')} ({op.get('weight')})"
    if k == "delete_edge":
        return f"delete edge {op.get('source')} -> {op.get('target')}"
    if k == "rename_node":
        return f"rename {op.get('id')} -> {op.get('new_id')}"
    return f"{str(k).replace('_', ' ')} {op.get('id')}"


def _need(graph: nx.DiGraph, node, what: str = "node") -> None:
    if node not in graph:
        raise InputError(f"edit: unknown {what} {node!r}")


def _text_list(value, field_name: str) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        raise InputError(f"edit: '{field_name}' must be a list of strings, got {value!r}")
    return list(dict.fromkeys(s.strip() for s in value if str(s).strip()))


def _add_node(g: nx.DiGraph, op: dict) -> None:
    node = str(op.get("id", "")).strip()
    if not node:
        raise InputError("edit: a new node needs a non-empty name")
    if node in g:
        raise InputError(f"edit: node {node!r} already exists")
    if op.get("kind") not in KINDS:
        raise InputError(f"edit: kind must be one of {KINDS}, got {op.get('kind')!r}")
    g.add_node(node, kind=op["kind"], label=str(op.get("label") or node).strip(),
               synonyms=_text_list(op.get("synonyms", []), "synonyms"), description=str(op.get("description", "")))


def _update_node(g: nx.DiGraph, op: dict) -> None:
    _need(g, op.get("id"))
    attrs = g.nodes[op["id"]]
    if "label" in op:
        attrs["label"] = str(op["label"]).strip()
    if "synonyms" in op:
        attrs["synonyms"] = _text_list(op["synonyms"], "synonyms")
    if "description" in op:
        attrs["description"] = str(op["description"])


def _rename_node(g: nx.DiGraph, op: dict) -> None:
    old, new = op.get("id"), str(op.get("new_id", "")).strip()
    _need(g, old)
    if not new:
        raise InputError("edit: the new name must not be empty")
    if new in g and new != old:
        raise InputError(f"edit: cannot rename {old!r} to {new!r}: a node of that name exists")
    nx.relabel_nodes(g, {old: new}, copy=False)
    g.nodes[new]["label"] = new


def _delete_node(g: nx.DiGraph, op: dict) -> None:
    _need(g, op.get("id"))
    g.remove_node(op["id"])


def _set_edge(g: nx.DiGraph, op: dict) -> None:
    u, v, relation = op.get("source"), op.get("target"), op.get("relation")
    _need(g, u, "source node")
    _need(g, v, "target node")
    try:
        weight = float(op.get("weight", 1.0))
    except (TypeError, ValueError):
        raise InputError(f"edit: weight must be a number in [0, 1], got {op.get('weight')!r}") from None
    if not math.isfinite(weight):
        raise InputError(f"edit: weight must be a number in [0, 1], got {weight!r}")
    old = g.edges[u, v].get("relation") if g.has_edge(u, v) else None
    if old is not None and old != relation and {old, relation} == set(RELATIONS):
        raise InputError(f"edit: finding {u!r} already {old} {v!r}; a finding cannot both support and exclude "
                         "one disease (delete that edge first)")
    g.add_edge(u, v, relation=relation, weight=weight)


def _delete_edge(g: nx.DiGraph, op: dict) -> None:
    if not g.has_edge(op.get("source"), op.get("target")):
        raise InputError(f"edit: no edge {op.get('source')!r} -> {op.get('target')!r}")
    g.remove_edge(op["source"], op["target"])


EDITS = {"add_node": _add_node, "update_node": _update_node, "rename_node": _rename_node,
         "delete_node": _delete_node, "set_edge": _set_edge, "delete_edge": _delete_edge}


# ----------------------------------------------------------------------------------------------- diff

@dataclass
class GraphDiff:
    nodes_added: list = field(default_factory=list)
    nodes_removed: list = field(default_factory=list)
    nodes_changed: dict = field(default_factory=dict)  # node -> {attr: (old, new)}
    edges_added: list = field(default_factory=list)
    edges_removed: list = field(default_factory=list)
    edges_changed: dict = field(default_factory=dict)  # (u, v) -> {attr: (old, new)}

    @property
    def empty(self) -> bool:
        return not any(vars(self).values())

    def rows(self) -> list[dict]:
        """One row per change: ``{"change", "item", "detail"}``, for a table."""
        out = [{"change": "node added", "item": str(n), "detail": ""} for n in self.nodes_added]
        out += [{"change": "node removed", "item": str(n), "detail": ""} for n in self.nodes_removed]
        out += [{"change": "node changed", "item": str(n), "detail": _attrs(c)} for n, c in self.nodes_changed.items()]
        out += [{"change": "edge added", "item": f"{u} -> {v}", "detail": _attrs(a)} for u, v, a in self.edges_added]
        out += [{"change": "edge removed", "item": f"{u} -> {v}", "detail": ""} for u, v, _ in self.edges_removed]
        out += [{"change": "edge changed", "item": f"{u} -> {v}", "detail": _attrs(c)}
                for (u, v), c in self.edges_changed.items()]
        return out


def _attrs(d: dict) -> str:
    return ", ".join(f"{k}: {v[0]!r} -> {v[1]!r}" if isinstance(v, tuple) else f"{k}: {v!r}"
                     for k, v in sorted(d.items()))


def _changed(a: dict, b: dict) -> dict:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def diff_graphs(a: nx.DiGraph, b: nx.DiGraph) -> GraphDiff:
    """What it takes to go from ``a`` to ``b``."""
    d = GraphDiff()
    d.nodes_added = [n for n in b if n not in a]
    d.nodes_removed = [n for n in a if n not in b]
    d.nodes_changed = {n: c for n in a if n in b and (c := _changed(a.nodes[n], b.nodes[n]))}
    d.edges_added = [(u, v, attrs) for u, v, attrs in b.edges(data=True) if not a.has_edge(u, v)]
    d.edges_removed = [(u, v, attrs) for u, v, attrs in a.edges(data=True) if not b.has_edge(u, v)]
    d.edges_changed = {(u, v): c for u, v in a.edges if b.has_edge(u, v) and (c := _changed(a.edges[u, v], b.edges[u, v]))}
    return d
