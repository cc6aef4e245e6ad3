"""Test data for curation: a small CCF JSON file made from the sample world's test records.

The counterfactual of a record is its chain of thought with the gold disease's name swapped for another
disease of the file: good enough as test data (it is not how the generator writes counterfactuals).
"""

from __future__ import annotations

import json
from pathlib import Path

from core.io import formats
from core.io.trajectories import read_jsonl
from workbench.demo import SAMPLE_WORLDS

TEST_RECORDS = SAMPLE_WORLDS["text"] / "data" / "test.jsonl"


def ccf_items(n: int = 6, targets_per_item: int = 1, offset: int = 0) -> list[dict]:
    """``n`` CCF items from distinct-label test records, ``targets_per_item`` counterfactuals each."""
    records = read_jsonl(TEST_RECORDS)
    labels = sorted({r["label"] for r in records})
    items = []
    for rec in records[offset:offset + n]:
        report = formats.think_of(rec["completion"])
        others = [d for d in labels if d != rec["label"]]
        start = (len(items) * 5) % len(others)
        targets = (others[start:] + others[:start])[:targets_per_item]
        items.append({"id": rec["id"], "prompt": rec["prompt"], "report": report, "diagnose": rec["label"],
                      "counterfact": {t: report.replace(rec["label"], t) for t in targets}})
    return items


def write_ccf(path: Path, n: int = 6, targets_per_item: int = 1, offset: int = 0) -> Path:
    path.write_text(json.dumps(ccf_items(n, targets_per_item, offset), indent=1), encoding="utf-8")
    return path


def annotate_until_empty(db: str, names: list[str], barrier, results) -> None:
    """A worker process: for each annotator name in turn (all workers start each name together), claim
    and decide items until that annotator's queue is empty; put (name, item, decision) on ``results``."""
    from core.curation import queue as curation
    from core.io.store import Store

    store = Store.open(Path(db))
    done = []
    for name in names:
        barrier.wait(timeout=60)
        while (item := curation.claim_next(store, name)) is not None:
            decision = "accept" if (item + len(name)) % 3 else "reject"
            curation.annotate(store, item, name, decision)
            done.append((name, item, decision))
    store.close()
    results.put(done)
