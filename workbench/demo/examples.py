"""Small example files of each import format (CCF, TRL, ms-swift), written into a world's ``examples/``
so that Curation's Import tab has something to try (``workbench.demo.build`` calls it; deterministic).

    write_examples(Path("sample_data"))   # -> sample_data/examples/{ccf_example.json, trl_pairs.jsonl, swift_pairs.json}

Six test studies, each rewritten by the concept-graph rules towards one confusable disease: the chosen side
is the study's own chain of thought, the rejected side its counterfactual. The same pairs in the three
formats, so importing any of them shows the same six pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.counterfactuals.rewrite import (
    choose_targets,
    make_counterfactuals,
    true_disease,
)
from core.graph import concepts
from core.io import formats
from core.io.trajectories import read_jsonl

FILES = {"ccf": "ccf_example.json", "trl": "trl_pairs.jsonl", "swift": "swift_pairs.json"}


def example_pairs(world: Path, n: int = 6) -> list[dict]:
    graph = concepts.load_graph(world / "concept_graph.json")
    out = []
    for rec in read_jsonl(world / "data" / "test.jsonl"):
        targets = choose_targets(graph, true_disease(rec), "confusable")
        if not targets:
            continue
        cfs = make_counterfactuals(graph, rec, targets[:1])
        if not cfs:  # the rewrite changes no finding (a study without one): no counterfactual
            continue
        cf = cfs[0]
        out.append({"id": rec["id"], "prompt": rec["prompt"], "chosen": rec["completion"], "rejected": cf.completion,
                    "label": rec["label"], "target": cf.target, "source": "thinking", "weight": 1.0})
        if len(out) == n:
            break
    return out


def write_examples(world: Path, out: Path | None = None, n: int = 6) -> dict[str, Path]:
    """Write the three files under ``out`` (default ``world/examples``); returns format -> path."""
    out = out or world / "examples"
    out.mkdir(parents=True, exist_ok=True)
    rows = example_pairs(world, n)
    ccf = [{**item, "id": row["id"]} for item, row in zip(formats.ccf_records(rows), rows, strict=True)]
    texts = {"ccf": json.dumps(ccf, indent=1, ensure_ascii=False) + "\n",
             "trl": "".join(json.dumps(formats.trl_record(r), ensure_ascii=False) + "\n" for r in rows),
             "swift": json.dumps([formats.swift_record(r) for r in rows], indent=1, ensure_ascii=False) + "\n"}
    paths = {fmt: out / name for fmt, name in FILES.items()}
    for fmt, path in paths.items():
        path.write_text(texts[fmt], encoding="utf-8")
    return paths


if __name__ == "__main__":
    from workbench.demo import text_world

    print(write_examples(text_world()))
