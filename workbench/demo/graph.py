"""Build the demo world's concept graph (14 CheXpert labels and their findings) from ``spec``."""

from __future__ import annotations

import networkx as nx

from workbench.demo import spec


def build_graph() -> nx.DiGraph:
    g = nx.DiGraph(name="CheXpert concept graph (demo world)")
    for d in spec.DISEASES:
        g.add_node(d, kind="disease", label=d, synonyms=[], description=spec.DESCRIPTIONS.get(d, ""))
    for f, forms in spec.SYNONYMS.items():
        g.add_node(f, kind="finding", label=f, synonyms=list(forms[1:]), description=spec.DESCRIPTIONS.get(f, ""))
    for d, rates in spec.FINDING_RATES.items():
        for f, p in rates.items():
            g.add_edge(f, d, relation="supports", weight=round(p, 3))
    for f, ds in spec.EXCLUDES.items():
        for d in ds:
            g.add_edge(f, d, relation="excludes", weight=1.0)
    return g
