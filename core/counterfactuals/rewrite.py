"""Graph-driven counterfactual reasoning: rewrite a CoT so that it argues for another disease, and score it.

    cf = rewrite(graph, record["completion"], true="Pneumonia", target="Edema")
    cf.text        # "<think> vascular congestion suggests Edema. ... </think> The disease of this patient is Edema."
    cf.swaps       # [{"action": "swap", "from": "infiltrate", "to": "vascular congestion", ...}, ...]
    consistency(graph, cf.text, "Edema", original=record["completion"]).score    # in [0, 1]
    choose_targets(graph, "Pneumonia", "confusable")                             # ["Consolidation", ...]

Rules (the design's "swap findings of the true disease for findings of the target, drop excluded ones"):
a finding that supports the target is kept; a finding that supports the true disease (and not the target)
is swapped for an unused finding that supports the target, heaviest edge first, or dropped when none is
left; a finding the target excludes is swapped that way if it supported the true disease, else dropped;
other findings are kept. Mentions of the true disease become the target, so the answer names the target
and the format is kept. Dropping removes the finding's sentence, or only the finding and its
conjunction when the sentence names other findings too.

Mentions are found in free text by every node's label and synonyms (whole words, longest first). Disease
names match case-sensitively and first, so the disease "Consolidation" and the finding "consolidation"
stay apart; findings match in any case.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

from core.errors import InputError
from core.graph import concepts
from core.io.answers import answer_of

TARGET_MODES = ("one", "all", "confusable")


@dataclass(frozen=True)
class Mention:
    start: int
    end: int
    node: str
    kind: str  # "disease" | "finding"
    name_index: int  # 0 for the label, k for the k-th synonym


@dataclass(frozen=True)
class Forms:
    """The graph's names as compiled patterns, longest first per kind (diseases first): build once with
    ``mention_forms`` and pass to ``find_mentions`` when scanning many texts against one graph."""
    patterns: tuple  # (kind, compiled pattern, node, name index, name is also a finding's name)


def mention_forms(graph: nx.DiGraph) -> Forms:
    finding_names = {n.lower() for f in concepts.findings(graph) for n in concepts.names(graph, f)}
    out = []
    for kind, flags in (("disease", 0), ("finding", re.IGNORECASE)):
        forms = [(name, node, k) for node in _of_kind(graph, kind) for k, name in enumerate(concepts.names(graph, node))]
        for name, node, k in sorted(forms, key=lambda f: -len(f[0])):
            out.append((kind, re.compile(rf"(?<![\w]){re.escape(name)}(?![\w])", flags), node, k,
                        kind == "disease" and name.lower() in finding_names))
    return Forms(tuple(out))


def find_mentions(graph: nx.DiGraph, text: str, forms: Forms | None = None) -> list[Mention]:
    """Non-overlapping mentions of graph nodes in ``text``, in text order."""
    taken: list[Mention] = []
    for kind, pattern, node, k, also_finding in (forms or mention_forms(graph)).patterns:
        for m in pattern.finditer(text):
            if also_finding and _opens_sentence(text, m.start()):
                continue  # "Consolidation and air bronchograms." is the finding, capitalised
            if not any(m.start() < t.end and t.start < m.end() for t in taken):
                taken.append(Mention(m.start(), m.end(), node, kind, k))
    return sorted(taken, key=lambda t: t.start)


def _opens_sentence(text: str, pos: int) -> bool:
    return re.search(r"(^|[.;>])\s*$", text[:pos]) is not None  # not after ":" ("Impression: Lung Opacity")


def _of_kind(graph: nx.DiGraph, kind: str) -> list[str]:
    return concepts.diseases(graph) if kind == "disease" else concepts.findings(graph)


@dataclass
class Rewrite:
    text: str
    swaps: list[dict] = field(default_factory=list)  # {"action": "swap"|"drop"|"answer", "from", "to", "node"}


def plan(graph: nx.DiGraph, present: list[str], true: str, target: str) -> dict[str, str | None]:
    """Finding -> replacement finding (None: drop) for each finding that must change; see the module rules."""
    supports_target = concepts.related(graph, target, "supports")
    excluded = concepts.related(graph, target, "excludes")
    supports_true = concepts.related(graph, true, "supports") if true in graph else {}
    pool = [f for f in supports_target if f not in present]
    out: dict[str, str | None] = {}
    for f in dict.fromkeys(present):
        if f in supports_target:
            continue
        if f in supports_true:
            out[f] = pool.pop(0) if pool else None
        elif f in excluded:
            out[f] = None
    return out


def rewrite(graph: nx.DiGraph, text: str, true: str, target: str, mentions: list[Mention] | None = None) -> Rewrite:
    """``text`` rewritten to argue for ``target`` instead of ``true`` (see the module docstring);
    ``mentions``: ``find_mentions(graph, text)`` when the caller has it already."""
    for name, value in (("target", target), ("true disease", true)):
        if graph.nodes.get(value, {}).get("kind") != "disease":
            raise InputError(f"counterfactual: {name} {value!r} is not a disease of the concept graph")
    if target == true:
        raise InputError(f"counterfactual: the target must differ from the true disease ({true!r})")
    mentions = find_mentions(graph, text) if mentions is None else mentions
    decisions = plan(graph, [m.node for m in mentions if m.kind == "finding"], true, target)
    dropped = [m for m in mentions if m.kind == "finding" and m.node in decisions and decisions[m.node] is None]
    kept = [m for m in mentions if m.kind == "finding" and m not in dropped]
    drops = _union([_drop_span(text, m, kept) for m in dropped])
    log = [{"action": "drop", "from": text[m.start:m.end], "to": "", "node": m.node} for m in dropped]
    edits = [(s, e, "") for s, e in drops]
    for m in mentions:
        if any(s <= m.start and m.end <= e for s, e in drops):
            continue
        new = None
        if m.kind == "finding" and decisions.get(m.node):
            new = _surface(graph, decisions[m.node], m.name_index, text[m.start:m.end])
            log.append({"action": "swap", "from": text[m.start:m.end], "to": new, "node": m.node})
        elif m.kind == "disease" and m.node == true:
            new = concepts.names(graph, target)[0]
            log.append({"action": "answer", "from": text[m.start:m.end], "to": new, "node": m.node})
        if new is not None:
            edits.append((m.start, m.end, new))
    out = text
    for start, end, new in sorted(edits, reverse=True):
        out = out[:start] + new + out[end:]
    out = re.sub(r"(?:,|\s+and|\s+or)\s*(?=[.;](?:\s|$|<))", "", out)  # "a, ." left by a drop -> "a."
    return Rewrite(re.sub(r"(?<=\S) {2,}(?=\S)", " ", out), log)


def _surface(graph: nx.DiGraph, node: str, index: int, written: str) -> str:
    """The replacement's name in the same style: same synonym index when it has one, same initial case."""
    forms = concepts.names(graph, node)
    name = forms[index] if index < len(forms) else forms[0]
    return name[:1].upper() + name[1:] if written[:1].isupper() else name


SENTENCE_END = re.compile(r"[.;](?=\s|$|<)")  # a sentence or a clause


def _union(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping deletions merged, so that applying them right to left never cuts into another."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return out


def _drop_span(text: str, m: Mention, kept: list[Mention]) -> tuple[int, int]:
    """What to delete for a dropped finding: its sentence when no kept finding shares it, else the finding
    and a conjunction beside it."""
    starts = [e.end() for e in SENTENCE_END.finditer(text, 0, m.start)] + [text.rfind(">", 0, m.start) + 1]
    start = max(starts)
    end_m, stop = SENTENCE_END.search(text, m.end), text.find("<", m.end)
    end = end_m.end() if end_m else len(text)
    end = stop if 0 <= stop < end else end  # a sentence ends at a tag too ("... </think>")
    if not any(start <= o.start < end for o in kept):
        while start < end and text[start].isspace():
            start += 1
        return start, end
    after = re.match(r",\s*|\s+and\s+|\s+or\s+", text[m.end:])
    if after:
        return m.start, m.end + after.end()
    before = re.search(r"(,\s*|\s+and\s+|\s+or\s+)$", text[start:m.start])
    return (m.start - len(before.group(0)) if before else m.start), m.end


@dataclass(frozen=True)
class Consistency:
    score: float  # mean of the three parts below, in [0, 1]
    support: float  # share of the mentioned findings that support the target (0 when none is mentioned)
    no_excluded: float  # 1 when the rewrite mentions findings, none of which the target excludes, and its reasoning
    #                     names no disease but the target; 0 otherwise (a rewrite without findings shows nothing)
    format_kept: float  # share of the format checks passed (think tags as in the original, answer names target)
    supporting: tuple[str, ...]
    excluded: tuple[str, ...]
    others: tuple[str, ...] = ()  # diseases other than the target that the reasoning still names


def consistency(graph: nx.DiGraph, text: str, target: str, original: str | None = None,
                forms: Forms | None = None) -> Consistency:
    """How well ``text`` argues for ``target`` by the graph (the annotators' sort key), scored on what the text
    contains: no finding mentioned is no support and no evidence of consistency (not "nothing excluded"), and a
    reasoning that still names another disease ("... concerning for pneumonia") contradicts its answer."""
    mentions = find_mentions(graph, text, forms)
    found = list(dict.fromkeys(m.node for m in mentions if m.kind == "finding"))
    supports, excludes = concepts.related(graph, target, "supports"), concepts.related(graph, target, "excludes")
    sup = [f for f in found if f in supports]
    exc = [f for f in found if f in excludes]
    reasoning_end = text.find("</think>") if "</think>" in text else len(text)
    others = list(dict.fromkeys(m.node for m in mentions if m.kind == "disease" and m.node != target
                                and m.start < reasoning_end))
    support = len(sup) / len(found) if found else 0.0
    clean = 1.0 if found and not exc and not others else 0.0
    structured = original is None or answer_of(original) is not None
    checks = [answer_of(text) == target if structured else target in _tail(text)]
    if original is not None:
        checks += [(tag in text) == (tag in original) for tag in ("<think>", "</think>")]
    fmt = sum(checks) / len(checks)
    score = round((support + clean + fmt) / 3, 4)
    return Consistency(score, round(support, 4), clean, round(fmt, 4), tuple(sup), tuple(exc), tuple(others))


def changes_findings(graph: nx.DiGraph, original: str, text: str, forms: Forms | None = None) -> bool:
    """Whether ``text`` mentions other findings than ``original`` (a finding swapped, dropped or added): a rewrite
    that changes only the answer is not a counterfactual, however its answer reads."""
    def of(t: str) -> set[str]:
        return {m.node for m in find_mentions(graph, t, forms) if m.kind == "finding"}
    return of(original) != of(text)


def _tail(text: str) -> str:
    return text.split("</think>")[-1]


def choose_targets(graph: nx.DiGraph, true: str | None, mode: str, target: str | None = None) -> list[str]:
    """Targets for one trajectory: ``one`` (``target``), ``all`` diseases, or the ``confusable`` ones."""
    if mode not in TARGET_MODES:
        raise InputError(f"targets: mode must be one of {TARGET_MODES}, got {mode!r}")
    if mode == "one":
        if target not in concepts.diseases(graph):
            raise InputError(f"targets: {target!r} is not a disease of the concept graph")
        return [] if target == true else [target]
    if mode == "all":
        return [d for d in concepts.diseases(graph) if d != true]
    return concepts.confusable(graph, true) if true in graph else []


def changed_spans(a: str, b: str) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """Both texts cut into (piece, changed) runs by a word-level diff, for a side-by-side view."""
    ta, tb = re.findall(r"\s+|\w+|[^\w\s]", a), re.findall(r"\s+|\w+|[^\w\s]", b)
    left, right = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes():
        if i2 > i1:
            left.append(("".join(ta[i1:i2]), op != "equal"))
        if j2 > j1:
            right.append(("".join(tb[j1:j2]), op != "equal"))
    return _merge(left), _merge(right)


def _merge(runs: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Join changed runs separated only by spaces ("clear" " " "lungs" -> "clear lungs")."""
    out: list[tuple[str, bool]] = []
    for k, (text, changed) in enumerate(runs):
        bridge = not changed and not text.strip() and 0 < k < len(runs) - 1 and runs[k + 1][1] and out and out[-1][1]
        if (changed or bridge) and out and out[-1][1]:
            out[-1] = (out[-1][0] + text, True)
        else:
            out.append((text, changed))
    return out


# ------------------------------------------------------------------------------------ making and storing

METHODS = ("graph", "llm", "image_swap")


@dataclass(frozen=True)
class Counterfactual:
    target: str
    completion: str
    method: str  # "graph" | "llm" | "image_swap"
    graph_version: int | None
    model: str | None
    settings: dict
    consistency: Consistency | None  # None for an image swap: its text is the original's
    images: tuple[str, ...] = ()  # the rejected side's images: the trajectory's own, or the swapped-in study's


def make_counterfactuals(graph: nx.DiGraph, record: dict, targets: list[str], method: str = "graph",
                         graph_version: int | None = None, expert=None,
                         donors: list[dict] | None = None, skipped: list[str] | None = None) -> list[Counterfactual]:
    """One counterfactual of ``record`` per target, by the graph rules, by ``expert`` (an ``Expert``) or, for
    ``image_swap``, by another study's image from ``donors`` (``image_swaps``). A text counterfactual keeps
    the record's ``images``. A text rewrite that changes no finding (only the answer) is not a counterfactual:
    it is left out, and ``skipped`` (when given) gets a line saying so."""
    if method not in METHODS:
        raise InputError(f"counterfactual: method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "llm" and expert is None:
        raise InputError("counterfactual: method 'llm' needs a loaded model (choose a checkpoint)")
    if method == "image_swap":
        return image_swaps(record, donors or [], targets, graph_version)
    true = true_disease(record)
    forms = mention_forms(graph)  # one scan of the graph's names for every target and consistency check
    mentions = find_mentions(graph, record["completion"], forms)
    images = tuple(record.get("images") or ())
    out = []
    for target in targets:
        if method == "graph":
            if true is None:
                raise InputError(f"trajectory {record.get('id')}: no 'label' and no answer to take the true disease from")
            rw = rewrite(graph, record["completion"], true, target, mentions)
            text, settings, model = rw.text, {"rules": "swap-by-weight", "swaps": rw.swaps}, None
        else:
            text, settings = expert.rewrite(graph, record["completion"], true, target)
            model = expert.name
        if not changes_findings(graph, record["completion"], text, forms):
            if skipped is not None:
                skipped.append(f"{record.get('id')} -> {target}: the rewrite changes no finding, only the answer; "
                               "not a counterfactual")
            continue
        out.append(Counterfactual(target, text, method, graph_version, model, settings,
                                  consistency(graph, text, target, record["completion"], forms), images))
    return out


def image_swaps(record: dict, donors: list[dict], targets: list[str], graph_version: int | None = None,
                seed: int = 0) -> list[Counterfactual]:
    """CPO++'s visual counterfactuals of a trajectory with images: per target disease, the same chain of
    thought shown with another study's image, a study whose label is the target (the contract's method
    ``image_swap``: ``images`` = the swapped-in image(s), text unchanged). The donor is a seeded, stable pick
    among ``donors`` of that label with other images (so each study gets its own, not always the first);
    a target without such a study gets no counterfactual (``swap_donors`` says which have one)."""
    if not record.get("images"):
        raise InputError(f"trajectory {record.get('id')}: an image swap needs a trajectory with images")
    out = []
    for target in targets:
        donor = _donor(record, swap_donors(donors, target, record), seed)
        if donor is None:
            continue
        settings = {"donor": donor.get("id"), "donor_label": target, "original_images": list(record["images"])}
        out.append(Counterfactual(target, record["completion"], "image_swap", graph_version, None, settings, None,
                                  tuple(donor["images"])))
    return out


def swap_donors(donors: list[dict], target: str, record: dict | None = None) -> list[dict]:
    """The studies whose image can stand in for ``target``: label ``target``, images other than ``record``'s."""
    own = list(record.get("images") or []) if record else None
    return [d for d in donors if d.get("images") and true_disease(d) == target and list(d["images"]) != own
            and (record is None or d.get("id") != record.get("id"))]


def _donor(record: dict, candidates: list[dict], seed: int) -> dict | None:
    import hashlib

    key = lambda d: hashlib.sha256(f"{seed}\0{record.get('id')}\0{d.get('id')}".encode()).digest()  # noqa: E731
    return min(candidates, key=key) if candidates else None


def true_disease(record: dict) -> str | None:
    """The disease a trajectory argues for: its gold label, else the answer its completion gives."""
    return record.get("label") or answer_of(record["completion"])


def with_images(records: list[dict], data_file: str | Path) -> list[dict]:
    """``records`` (read by ``core.io.trajectories``) with ``images`` as absolute path strings, resolved against
    ``data_file`` where the file wrote them relative; [] for a text-only record. A bad ``images`` field is an
    ``InputError`` naming the file and the record."""
    from core.io.images import record_images

    out = []
    for rec in records:
        try:
            refs = record_images(rec, Path(data_file), field="images")
        except InputError as e:
            raise InputError(f"trajectory {rec.get('id')}: {e}") from None
        out.append({**rec, "images": [str(r.path) for r in refs]})
    return out
