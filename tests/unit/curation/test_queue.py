"""Curation engine: queue and claims, decisions, agreement, conflicts, and two processes on one queue."""

import html
import multiprocessing as mp
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_

from core.curation import queue as curation
from core.curation import snapshots
from core.curation.queue import QueueFilter
from core.errors import InputError
from core.io.store import Store
from tests.curation_data import annotate_until_empty, write_ccf
from workbench.diffview import diff_html


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "workbench.db")
    snapshots.import_file(s, write_ccf(tmp_path / "ccf.json", n=6))  # items 1..6, one per study
    yield s
    s.close()


def statuses(store, **kw):
    df = curation.queue(store, QueueFilter(**kw))
    return dict(zip(df["id"], df["status"], strict=True))


def test_queue_puts_pending_first_and_filters(store):
    curation.annotate(store, 1, "ada", "accept")
    assert curation.queue(store)["id"].tolist() == [2, 3, 4, 5, 6, 1]
    assert curation.queue(store, limit=2)["id"].tolist() == [2, 3]
    assert statuses(store, status="done") == {1: "done"}
    assert statuses(store, annotator="ada") == {1: "done"}
    label = curation.item(store, 3).label
    assert set(statuses(store, labels=(label,))) == {3}
    target = curation.item(store, 4).target
    assert 4 in statuses(store, targets=(target,))
    with store.transaction() as con:  # as the generator stores them: a method and a consistency score
        con.execute("UPDATE counterfactuals SET method = 'graph', consistency = id / 10.0 WHERE id > 3")
    assert set(statuses(store, methods=("graph",), min_consistency=0.45)) == {5, 6}
    assert curation.progress(store) == (1, 6)


def test_claims_hand_two_annotators_different_items_and_expire(store):
    assert curation.claim_next(store, "ada", now=0) == 1
    assert curation.claim_next(store, "ada", now=1) == 1  # a rerun of the page: the same item
    assert curation.claim_next(store, "bob", now=2) == 2  # item 1 needs one decision and ada holds it
    assert curation.claim_next(store, "bob", QueueFilter(targets=(curation.item(store, 3).target,)), now=3) == 3
    assert curation.claim_next(store, "cy", now=curation.CLAIM_TTL + 10) == 1  # ada's claim expired


def test_k_decisions_skip_and_changing_a_decision(store):
    curation.set_required(store, 2)
    assert curation.claim_next(store, "ada") == 1 and curation.claim_next(store, "bob") == 1
    curation.annotate(store, 1, "ada", "accept")
    assert statuses(store)[1] == "pending"
    curation.annotate(store, 1, "bob", "skip")  # a skip is not a decision: cy gets the item
    assert curation.claim_next(store, "bob") == 2 and curation.claim_next(store, "cy") == 1
    curation.annotate(store, 1, "cy", "reject")
    assert statuses(store)[1] == "conflict"
    curation.annotate(store, 1, "cy", "accept")  # changed her mind: replaces, never adds
    assert statuses(store)[1] == "done"
    assert len(curation.item(store, 1).annotations) == 3  # ada, bob (skip), cy
    curation.annotate(store, 1, "ada", "skip")  # a stale tab's Skip: ada's accept stands (it was erased)
    assert statuses(store)[1] == "done"
    ann = curation.item(store, 1).annotations
    assert dict(zip(ann["annotator"], ann["decision"], strict=True))["ada"] == "accept"


def test_bad_decisions_are_refused(store):
    with pytest.raises(InputError, match="decision must be one of"):
        curation.annotate(store, 1, "ada", "maybe")
    with pytest.raises(InputError, match="needs the edited"):
        curation.annotate(store, 1, "ada", "edit", edited_text="  ")
    with pytest.raises(InputError, match="no counterfactual pair with id 99"):
        curation.annotate(store, 99, "ada", "accept")
    with pytest.raises(InputError, match="annotator name"):
        curation.claim_next(store, " ")


def test_cohen_per_pair_fleiss_and_light_overall(store):
    curation.set_required(store, 2)  # an agreement study: two decisions per item
    ada, bob = ["accept", "accept", "reject", "reject"], ["accept", "reject", "reject", "reject"]
    for item, a, b in zip(range(1, 5), ada, bob, strict=True):
        curation.annotate(store, item, "ada", a)
        curation.annotate(store, item, "bob", b)
    ag = curation.agreement(store)
    row = ag.pairs.iloc[0]
    # p_o = 0.75, p_e = 0.5 * 0.25 + 0.5 * 0.75 = 0.5, kappa = (0.75 - 0.5) / 0.5
    assert (row.annotator_a, row.annotator_b, row["items"]) == ("ada", "bob", 4)
    assert row.kappa == pytest.approx(0.5) and ag.light == pytest.approx(0.5) and ag.items == 4


def test_two_edits_that_write_different_counterfactuals_disagree(store):
    """An edit is rated by its text: two annotators who both edit an item but write different counterfactuals
    disagree, as the conflict list has it (every agreement figure read 1.0 beside two conflicts)."""
    curation.set_required(store, 2)
    for item, (a, b) in enumerate([("accept", "accept"), ("edit: x", "edit: x"), ("edit: x", "edit: y"),
                                   ("reject", "reject")], 1):
        for who, what in (("ada", a), ("bob", b)):
            decision, _, text = what.partition(": ")
            curation.annotate(store, item, who, decision, text or None)
    assert statuses(store)[3] == "conflict" and statuses(store)[2] == "done"
    ag = curation.agreement(store)
    assert ag.pairs.iloc[0]["agreement"] == pytest.approx(0.75)
    assert ag.pairs.iloc[0]["kappa"] < 1 and ag.fleiss < 1 and ag.light < 1


def test_fleiss_kappa_matches_the_worked_example():
    # Fleiss (1971) as worked on Wikipedia: 10 items, 14 raters, 5 categories -> 0.210
    counts = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                       [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert curation.fleiss_kappa(counts) == pytest.approx(0.210, abs=5e-4)
    assert np.isnan(curation.fleiss_kappa(np.array([[2, 0, 0], [3, 0, 0]])))


def test_conflicts_are_listed_and_a_resolution_decides_the_export(store, tmp_path):
    curation.set_required(store, 2)
    edited = "<think> a fixed chain </think> The disease of this patient is Edema."
    curation.annotate(store, 1, "ada", "accept")
    curation.annotate(store, 1, "bob", "edit", edited_text=edited)
    curation.annotate(store, 2, "ada", "accept")
    curation.annotate(store, 2, "bob", "accept")
    assert set(curation.conflicts(store)["annotator"]) == {"ada", "bob"}
    assert [r["id"] for r in curation.curated_rows(store)] == [2]
    curation.resolve(store, 1, "edit", "cy", edited_text=edited, note="bob's fix is right")
    assert curation.conflicts(store).empty
    rows = {r["id"]: r for r in curation.curated_rows(store)}
    assert rows[1]["rejected"] == edited and rows[2]["rejected"] == curation.item(store, 2).counterfactual
    curation.resolve(store, 2, "reject", "cy")
    assert list({r["id"] for r in curation.curated_rows(store)}) == [1]


def test_guidelines_are_versioned_markdown(store):
    assert curation.guidelines(store) == curation.DEFAULT_GUIDELINES
    curation.save_guidelines(store, "**Reject** anything citing *opacity*.", "ada")
    curation.save_guidelines(store, "v2", "bob")
    assert curation.guidelines(store) == "v2"
    assert store.con.execute("SELECT COUNT(*) FROM guidelines").fetchone()[0] == 2


def test_two_processes_on_one_queue_lose_and_double_count_nothing(tmp_path):
    db = tmp_path / "workbench.db"
    s = Store.open(db)
    snapshots.import_file(s, write_ccf(tmp_path / "ccf.json", n=20, targets_per_item=2))  # 40 items
    labels = curation.filter_options(s)["labels"]
    curation.set_required(s, 2, QueueFilter(labels=tuple(labels[:3])))
    curation.set_required(s, 3, QueueFilter(labels=tuple(labels[3:6])))
    k = dict(s.con.execute("SELECT id, required_decisions FROM counterfactuals").fetchall())
    assert set(k.values()) == {1, 2, 3}
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    # phase 1: ada and bob at once; phase 2: one annotator ("tab") in both processes, as two browser tabs
    procs = [ctx.Process(target=annotate_until_empty, args=(str(db), [name, "tab"], barrier, results))
             for name in ("ada", "bob")]
    for p in procs:
        p.start()
    done = [d for _ in procs for d in results.get(timeout=120)]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    rows = s.con.execute("SELECT counterfactual_id, annotator, decision FROM annotations").fetchall()
    assert len(rows) == len(set((i, a) for i, a, _ in rows))  # one row per item and annotator
    stored = {(a, i): d for i, a, d in rows}
    assert all(stored[(a, i)] == d for a, i, d in done)  # nothing any process decided is lost
    per_item = Counter(i for i, a, _ in rows if a in ("ada", "bob"))
    assert per_item == {i: min(n, 2) for i, n in k.items()}  # k = 1: ada or bob, never both
    assert Counter(i for i, a, _ in rows if a == "tab") == {i: 1 for i, n in k.items() if n == 3}
    assert Counter(i for i, _, _ in rows) == k  # every item got exactly k decisions
    assert not s.con.execute("SELECT COUNT(*) FROM claims").fetchone()[0]
    s.close()


@settings(max_examples=60, deadline=None)
@given(st_.text(alphabet="ab <>&\".", max_size=30), st_.text(alphabet="ab <>&\".", max_size=30))
def test_diff_html_escapes_and_keeps_both_texts(original, counterfactual):
    left, right = diff_html(original, counterfactual)
    strip = lambda s: html.unescape(re.sub(r"</?mark[^>]*>", "", s))  # noqa: E731
    assert strip(left) == original and strip(right) == counterfactual
    assert "<" not in re.sub(r"</?mark[^>]*>", "", left + right)


def test_curation_trajectories_become_a_file_the_engine_scores(tmp_path, sample_world):
    from core.counterfactuals import store as counterfactual_store
    from core.curation.queue import trajectories_file
    from core.errors import InputError
    from core.graph.concepts import load_graph
    from core.io.store import Store
    from core.io.trajectories import read_jsonl

    store = Store.open(tmp_path / "w.db")
    with pytest.raises(InputError, match="no trajectories"):
        trajectories_file(store, tmp_path)
    records = read_jsonl(sample_world / "data" / "test.jsonl", 4)
    for _ in counterfactual_store.generate_batch(store, load_graph(sample_world / "concept_graph.json"), records,
                                                 "test", "confusable"):
        pass
    path = trajectories_file(store, tmp_path)
    back = read_jsonl(path)
    by_id = {r["id"]: r for r in records}
    assert len(back) >= 2 and all(r["completion"] == by_id[r["id"]]["completion"] for r in back)
    assert all(r["label"] == by_id[r["id"]]["label"] for r in back)
    assert trajectories_file(store, tmp_path) == path  # same rows, same file
    store.close()


def test_two_annotators_deciding_one_k1_item_the_second_is_told_it_was_decided(store):
    assert curation.claim_next(store, "ada", now=0) == 1
    assert curation.claim_next(store, "bob", now=curation.CLAIM_TTL + 10) == 1  # ada's claim expired: both hold it
    curation.annotate(store, 1, "ada", "accept")
    with pytest.raises(InputError, match=r"item 1 was decided by ada while you were reading it .* your decision "
                                         r"was not recorded"):
        curation.annotate(store, 1, "bob", "reject")
    assert statuses(store)[1] == "done" and curation.item(store, 1).annotations["annotator"].tolist() == ["ada"]
    curation.annotate(store, 1, "ada", "reject")  # one's own decision may still change
    assert statuses(store)[1] == "done"
