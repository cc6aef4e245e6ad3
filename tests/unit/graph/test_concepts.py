"""The concept graph: validation messages, edits, diff, synonym sets, and import/export round trips."""

import json

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import InputError
from core.graph import concepts
from core.graph import formats as graph_io

NAME = st.text(st.characters(categories=("L", "N", "P", "S"), exclude_characters="\x00"), min_size=1,
               max_size=10).map(str.strip).filter(bool)
FORMATS = ["json", "graphml", "csv"]


@st.composite
def graphs(draw):
    """A valid concept graph: unique names (case-insensitive), findings -> diseases, any relations and weights."""
    words = draw(st.lists(NAME, min_size=2, max_size=14, unique_by=str.lower))
    k = draw(st.integers(1, len(words) - 1))
    g = nx.DiGraph()
    for d in words[:k]:
        g.add_node(d, kind="disease", label=d, synonyms=[], description="")
    rest, found = words[k:], []
    while rest:
        m = draw(st.integers(0, 2))
        f, syn, rest = rest[0], rest[1:1 + m], rest[1 + m:]
        g.add_node(f, kind="finding", label=f, synonyms=syn, description=draw(st.text("ab <&>'\"", max_size=8)))
        found.append(f)
    for f in found:
        for d in words[:k]:
            if draw(st.booleans()):
                g.add_edge(f, d, relation=draw(st.sampled_from(concepts.RELATIONS)),
                           weight=draw(st.floats(0, 1, allow_nan=False)))
    return g


def same(a: nx.DiGraph, b: nx.DiGraph) -> bool:
    return concepts.diff_graphs(a, b).empty and set(a) == set(b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.sampled_from(FORMATS))
def test_export_then_import_gives_the_same_graph(g, fmt):
    assert concepts.validate(g) == []
    back = graph_io.import_graph(graph_io.export_graph(g, fmt), f"g.{fmt}", base=g)
    connected = g.subgraph([n for n in g if g.degree(n) > 0]) if fmt == "csv" else g  # CSV holds edges only
    assert same(connected, back)


@settings(max_examples=40, deadline=None)
@given(graphs())
def test_csv_without_a_base_infers_kinds_from_edge_direction(g):
    back = graph_io.import_graph(graph_io.export_graph(g, "csv"), "g.csv")
    assert set(back.edges) == set(g.edges)
    assert all(back.nodes[n]["kind"] == g.nodes[n]["kind"] for n in back)


@settings(max_examples=40, deadline=None)
@given(graphs(), st.data())
def test_validation_finds_planted_problems(g, data):
    nodes = sorted(g, key=str)
    a = data.draw(st.sampled_from(nodes))
    bad = g.copy()
    problem = data.draw(st.sampled_from(["self-loop", "duplicate", "weight", "unknown"]))
    if problem == "self-loop":
        bad.add_edge(a, a, relation="supports", weight=0.5)
        expected = f"edge {a!r} -> {a!r}: self-loop"
    elif problem == "duplicate":
        same_kind = [n for n in nodes if n != a and g.nodes[n]["kind"] == g.nodes[a]["kind"]]
        other = data.draw(st.sampled_from(same_kind)) if same_kind else None
        shout = a.upper() if a.upper().lower() == a.lower() else a  # names match in any case
        if other is None:
            bad.add_node("x-" + a, kind=g.nodes[a]["kind"], label="x-" + a, synonyms=[shout])
            expected = "belongs to both"
        else:
            bad.nodes[other]["synonyms"] = bad.nodes[other]["synonyms"] + [shout]
            expected = f"synonym {a.strip().lower()!r} belongs to both"
    elif problem == "weight":
        bad.add_edge("__f", a, relation="supports", weight=1.5)
        bad.nodes["__f"].update(kind="finding", label="__f", synonyms=[])
        expected = "weight must be a number in [0, 1], got 1.5"
    else:
        bad.add_edge(a, "__nowhere", relation="excludes", weight=1.0)
        expected = "unknown node '__nowhere'"
    assert any(expected in p for p in concepts.validate(bad)), concepts.validate(bad)


def test_the_sample_graph_is_valid_and_offers_synonym_sets(sample_world):
    g = concepts.load_graph(sample_world / "concept_graph.json")
    assert concepts.validate(g) == []
    sets = concepts.synonym_sets(g)
    assert sets["consolidation"] == ["consolidation", "airspace consolidation", "airspace opacity"]
    assert sets["opacity"] == ["opacity", "lung opacity"]
    assert set(sets) == set(concepts.findings(g))
    assert concepts.confusable(g, "Pneumonia")[0] == "Consolidation"  # shares consolidation, air bronchograms, opacity


def node_link(edges, nodes=("f", "D")):
    kinds = {"f": "finding", "D": "disease"}
    return {"directed": True, "multigraph": False, "graph": {},
            "nodes": [{"id": n, "kind": kinds.get(n, "finding"), "label": n, "synonyms": []} for n in nodes],
            "edges": [{"source": u, "target": v, "relation": r, "weight": 1.0} for u, v, r in edges]}


def test_clear_messages_for_each_kind_of_broken_graph(tmp_path):
    cases = {
        "unknown node 'Ghost'": node_link([("f", "Ghost", "supports")]),
        "self-loop": node_link([("f", "f", "supports")]),
        "edges[1]: finding 'f' both supports and excludes 'D' (also edges[0])": node_link(
            [("f", "D", "supports"), ("f", "D", "excludes")]),
        "must run from a finding to a disease, got disease -> finding": node_link([("D", "f", "supports")]),
    }
    for expected, data in cases.items():
        path = tmp_path / "g.json"
        path.write_text(json.dumps(data))
        with pytest.raises(InputError, match="g.json") as err:
            concepts.load_graph(path)
        assert expected in str(err.value)
    dup = node_link([])
    dup["nodes"].append({"id": "g", "kind": "finding", "label": "g", "synonyms": ["F "]})
    with pytest.raises(InputError, match="dup.json: invalid concept graph: synonym 'f' belongs to both 'f' and 'g'"):
        concepts.from_node_link(dup, "dup.json")


BROKEN_FILES = [
    ("edges.csv", b"source,target,relation,weight\nf,D,supports,0.5\ng,D,supports,heavy\n",
     r"edges.csv, line 3: field 'weight' must be a number, got 'heavy'"),
    ("edges.csv", b"source,target,relation,weight\nf,D,supports,0.5\nf,D,excludes,1\n",
     r"edges.csv: line 3: finding 'f' both supports and excludes 'D' \(also line 2\)"),
    ("edges.csv", b"source,target\nf,D\n", r"edges.csv, line 1: missing column\(s\) \['relation'\]"),
    ("edges.csv", b"source,target,relation,weight\nf,D,supports,0.5\n" + b"x" * (2 << 20) + b",D,supports,1\n",
     r"edges.csv, line 3: not a valid CSV row \(field larger than field limit"),  # a 2 MB field: not _csv.Error
    ("g.graphml", b"<graphml><graph>", r"g.graphml: not valid XML"),
    ("g.json", b"{nodes: [", r"g.json, line 1: not valid JSON"),
    ("notes.txt", b"", r"notes.txt: unknown graph format"),
]


@pytest.mark.parametrize("name,data,message", BROKEN_FILES)
def test_import_errors_name_the_file_and_line(name, data, message):
    with pytest.raises(InputError, match=message):
        graph_io.import_graph(data, name)


def test_edits_make_a_new_graph_and_refuse_what_would_break_it(sample_world):
    g = concepts.load_graph(sample_world / "concept_graph.json")
    g2 = concepts.apply_edit(g, {"op": "add_node", "id": "pleural fluid", "kind": "finding", "synonyms": "effusion, fluid"})
    g3 = concepts.apply_edit(g2, {"op": "set_edge", "source": "pleural fluid", "target": "Pleural Effusion",
                                  "relation": "supports", "weight": 0.7})
    assert "pleural fluid" not in g and g3.nodes["pleural fluid"]["synonyms"] == ["effusion", "fluid"]
    g4 = concepts.apply_edit(g3, {"op": "rename_node", "id": "pleural fluid", "new_id": "pleural fluid sign"})
    assert g4.edges["pleural fluid sign", "Pleural Effusion"]["weight"] == 0.7
    assert g4.nodes["pleural fluid sign"]["label"] == "pleural fluid sign"
    rows = concepts.diff_graphs(g, g4).rows()
    assert {r["change"] for r in rows} == {"node added", "edge added"}
    g5 = concepts.apply_edit(g4, {"op": "delete_node", "id": "opacity"})
    assert not any("opacity" == u for u, _ in g5.edges)
    refusals = {
        "already supports 'Lung Opacity'": {"op": "set_edge", "source": "opacity", "target": "Lung Opacity",
                                            "relation": "excludes"},
        "unknown target node 'Nowhere'": {"op": "set_edge", "source": "opacity", "target": "Nowhere", "relation": "supports"},
        "synonym 'patchy opacity' belongs to both": {"op": "update_node", "id": "nodule", "synonyms": ["patchy opacity"]},
        "node 'opacity' already exists": {"op": "add_node", "id": "opacity", "kind": "finding"},
        "a node of that name exists": {"op": "rename_node", "id": "opacity", "new_id": "nodule"},
        "must run from a finding to a disease": {"op": "set_edge", "source": "Edema", "target": "opacity",
                                                 "relation": "supports"},
        "weight must be a number in [0, 1]": {"op": "set_edge", "source": "opacity", "target": "Edema",
                                              "relation": "supports", "weight": 2},
    }
    for expected, op in refusals.items():
        with pytest.raises(InputError) as err:
            concepts.apply_edit(g, op)
        assert expected in str(err.value)
    assert concepts.diff_graphs(g, concepts.load_graph(sample_world / "concept_graph.json")).empty  # input untouched
