"""An import-linter contract type that import-linter lacks: no import cycle at all, between any two modules.

import-linter's own ``acyclic_siblings`` looks for cycles between the children of one package at a time, so a
package's ``__init__`` that imports a child which imports the package back slips through. This one takes every
module of the listed packages (imports inside functions count: they run too), finds the strongly connected
components of the import graph and reports each with its shortest cycle and the lines that make it. Configured
in ``pyproject.toml`` (``[tool.importlinter]``, ``contract_types``) and run by ``lint-imports``::

    [[tool.importlinter.contracts]]
    name = "No import cycles"
    type = "acyclic_modules"
    packages = ["core", "workbench", "pages"]
"""

from __future__ import annotations

import grimp
import networkx as nx
from importlinter import Contract, ContractCheck, fields, output
from importlinter.application import contract_utils
from importlinter.application.contract_utils import AlertLevel


def module_graph(graph: grimp.ImportGraph, packages: list[str]) -> nx.DiGraph:
    """The direct imports between the modules of ``packages`` (each package with all its descendants)."""
    modules = {m for p in packages for m in {p, *graph.find_descendants(p)}}
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    g.add_edges_from((m, i) for m in modules for i in graph.find_modules_directly_imported_by(m) if i in modules)
    return g


def shortest_cycle(g: nx.DiGraph, component: set[str]) -> list[str]:
    """The shortest cycle inside one strongly connected component, as modules ``[a, b, ..., a]``; ties by name."""
    sub = g.subgraph(component)
    best: list[str] | None = None
    for start in sorted(component):
        for succ in sorted(sub.successors(start)):
            path = [start, *nx.shortest_path(sub, succ, start)]  # [a, a] for a module importing itself
            if best is None or len(path) < len(best):
                best = path
    assert best is not None, "a strongly connected component of two or more modules has an edge"
    return best


def find_cycles(g: nx.DiGraph) -> list[list[str]]:
    """One shortest cycle per strongly connected component (self-imports included), sorted."""
    components = [c for c in nx.strongly_connected_components(g) if len(c) > 1 or g.has_edge(*[next(iter(c))] * 2)]
    return sorted(shortest_cycle(g, c) for c in components)


class AcyclicModulesContract(Contract):
    """No cycle in the import graph of ``packages``, counting every module (not only siblings).

    Options: ``packages`` (the root packages to check), ``ignore_imports`` (import expressions taken out of the
    graph first, as in import-linter's own contracts) and ``unmatched_ignore_imports_alerting`` (default
    ``error``: an ignored import that no longer exists fails the contract, so a stale exception is removed).
    """

    type_name = "acyclic_modules"

    packages = fields.ListField(subfield=fields.StringField())
    ignore_imports = fields.SetField(subfield=fields.ImportExpressionField(), required=False)
    unmatched_ignore_imports_alerting = fields.EnumField(AlertLevel, default=AlertLevel.ERROR)

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        removal = contract_utils.remove_ignored_imports_and_report(
            graph=graph, ignore_imports=self.ignore_imports,  # type: ignore[arg-type]
            unmatched_alerting=self.unmatched_ignore_imports_alerting)  # type: ignore[arg-type]
        cycles = find_cycles(module_graph(graph, list(self.packages)))  # type: ignore[arg-type]
        links = [[(a, b, _lines(graph, a, b)) for a, b in zip(c, c[1:], strict=False)] for c in cycles]
        return ContractCheck(kept=not cycles, warnings=list(removal.warnings),
                             ignored_import_count=removal.ignored_import_count, metadata={"cycles": links})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for links in check.metadata["cycles"]:
            output.print_error(f"Import cycle: {' -> '.join([links[0][0], *(b for _, b, _ in links)])}", bold=True)
            for importer, imported, lines in links:
                output.indent_cursor()
                output.print_error(f"{importer} -> {imported} (l.{lines})", bold=False)
            output.new_line()


def _lines(graph: grimp.ImportGraph, importer: str, imported: str) -> str:
    return ", ".join(str(d["line_number"]) for d in graph.get_import_details(importer=importer, imported=imported))
