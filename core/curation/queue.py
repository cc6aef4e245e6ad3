"""Curation of counterfactual pairs: the queue, claims, decisions, agreement between annotators,
conflicts and their resolution, and the guidelines. All state is in the store; every write is one
transaction, so two tabs or two processes annotating the same queue lose and double count nothing.

    item_id = claim_next(store, "ada", QueueFilter(targets=("Edema",)))   # the item ada looks at now
    annotate(store, item_id, "ada", "edit", edited_text="<think> ... </think> ...", note="typo")
    queue(store, QueueFilter(status="pending"))     # DataFrame, one row per counterfactual pair
    agreement(store).pairs                          # Cohen's kappa per annotator pair

An item needs k decisions (``counterfactuals.required_decisions``); a skip does not count towards k and
takes the item out of that annotator's queue only. An item is *done* when k annotators decided and
agree, a *conflict* when their decisions (or edited texts) differ, *resolved* once someone settles it.
Claims keep two annotators from being handed the same last slot of an item; they expire after ``ttl``
seconds, so a closed tab frees its item.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from core.curation.scored import trajectories_file  # noqa: F401 - the database's trajectories to score, here too
from core.errors import InputError
from core.io.store import Store

DECISIONS = ("accept", "reject", "edit", "skip")
RATED = ("accept", "reject", "edit")  # the categories agreement is computed over (skips are not ratings)
STATUSES = ("all", "pending", "conflict", "done", "resolved")
CLAIM_TTL = 600.0
DEFAULT_GUIDELINES = """**Accept** a counterfactual when it reads like a real chain of thought for its target disease:
the findings it cites support the target in the concept graph and none of them excludes it.
**Reject** it when it is incoherent, keeps findings of the original disease, or contradicts the graph.
**Edit** it when a small fix (a finding, a word) makes it acceptable. **Skip** when unsure: someone else
gets it. Add a note when you reject or edit, so conflicts can be settled."""


@dataclass(frozen=True)
class QueueFilter:
    labels: tuple[str, ...] = ()       # gold disease of the original
    targets: tuple[str, ...] = ()      # disease the counterfactual argues for
    methods: tuple[str, ...] = ()      # 'graph' | 'llm' | 'import'
    min_consistency: float | None = None
    max_consistency: float | None = None
    annotator: str | None = None       # only items this annotator decided (e.g. to give a second opinion)
    status: str = "all"
    world: str | None = None           # the world's items only (``World.key``; '' for items of no known world);
    #                                    None: every world's, a choice the page names

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def where(self) -> tuple[str, list]:
        """SQL conditions on ``c`` (counterfactuals) and ``t`` (trajectories), and their parameters."""
        sql, params = ["1 = 1"], []
        for column, values in (("t.label", self.labels), ("c.target", self.targets), ("c.method", self.methods)):
            if values:
                sql.append(f"{column} IN ({', '.join('?' * len(values))})")
                params += list(values)
        if self.min_consistency is not None:
            sql.append("c.consistency >= ?")
            params.append(self.min_consistency)
        if self.max_consistency is not None:
            sql.append("c.consistency <= ?")
            params.append(self.max_consistency)
        if self.world is not None:
            sql.append("t.world = ?")
            params.append(self.world)
        if self.annotator:
            sql.append("EXISTS (SELECT 1 FROM annotations x WHERE x.counterfactual_id = c.id AND x.annotator = ?)")
            params.append(self.annotator)
        return " AND ".join(sql), params


@dataclass
class Item:
    id: int
    prompt: str
    system: str | None
    original: str        # the real completion (chosen)
    counterfactual: str  # the counterfactual completion (rejected)
    label: str | None
    target: str
    method: str
    consistency: float | None
    source: str
    required: int
    annotations: pd.DataFrame  # annotator, decision, edited_text, note, updated_at
    images: list[str] = field(default_factory=list)           # the original's images (absolute paths)
    rejected_images: list[str] = field(default_factory=list)  # the counterfactual's: the same, or a swapped study's

    @property
    def swapped(self) -> bool:
        """An image swap (CPO++'s visual counterfactual): the counterfactual shows another image."""
        return self.rejected_images != self.images


QUEUE_SQL = """
SELECT c.id, t.label, c.target, c.method, c.consistency, t.source, c.required_decisions AS required,
       COALESCE(a.n, 0) AS decisions, COALESCE(a.variants, 0) AS variants, COALESCE(a.who, '') AS annotators,
       r.decision AS resolution,
       CASE WHEN r.decision IS NOT NULL THEN 'resolved' WHEN COALESCE(a.variants, 0) > 1 THEN 'conflict'
            WHEN COALESCE(a.n, 0) >= c.required_decisions THEN 'done' ELSE 'pending' END AS status{columns}
FROM counterfactuals c JOIN trajectories t ON t.id = c.trajectory_id
LEFT JOIN (SELECT counterfactual_id, COUNT(*) AS n, group_concat(annotator, ', ') AS who,
                  COUNT(DISTINCT decision || char(0) || COALESCE(edited_text, '')) AS variants,
                  MIN(decision) AS decision, MIN(edited_text) AS edited_text
           FROM annotations WHERE decision != 'skip' GROUP BY counterfactual_id) a ON a.counterfactual_id = c.id
LEFT JOIN resolutions r ON r.counterfactual_id = c.id
WHERE {where}
"""
ORDER = "CASE status WHEN 'pending' THEN 0 WHEN 'conflict' THEN 1 WHEN 'done' THEN 2 ELSE 3 END, id"


def _dicts(store: Store, sql: str, params: list | tuple = ()) -> tuple[list[str], list[tuple]]:
    return store.query_columns(sql, params)


def _read(store: Store, sql: str, params: list | tuple = ()) -> pd.DataFrame:
    columns, rows = _dicts(store, sql, params)
    return pd.DataFrame(rows, columns=columns)


def queue(store: Store, flt: QueueFilter = QueueFilter(), limit: int | None = None) -> pd.DataFrame:
    """One row per counterfactual pair matching ``flt``: metadata, decisions so far, status; pending first
    (the first ``limit`` rows only, if given)."""
    where, params = flt.where()
    sql = f"SELECT * FROM ({QUEUE_SQL.format(columns='', where=where)})"
    if flt.status != "all":
        sql += " WHERE status = ?"
        params.append(flt.status)
    sql += f" ORDER BY {ORDER}" + (f" LIMIT {int(limit)}" if limit is not None else "")
    return _read(store, sql, params).drop(columns=["variants", "resolution"])


def progress(store: Store, flt: QueueFilter = QueueFilter()) -> tuple[int, int]:
    """(settled items, all items) of the queue under ``flt`` (its status ignored): settled = done or resolved."""
    where, params = flt.where()
    row = _dicts(store, f"SELECT COUNT(*), COALESCE(SUM(status IN ('done', 'resolved')), 0) FROM "
                        f"({QUEUE_SQL.format(columns='', where=where)})", params)[1][0]
    return row[1], row[0]


def claim_next(store: Store, annotator: str, flt: QueueFilter = QueueFilter(), ttl: float = CLAIM_TTL,
               now: float | None = None) -> int | None:
    """The item ``annotator`` should look at: the one they hold a live claim on (if it still matches
    ``flt``), else the first matching item they have not decided whose decisions plus others' claims are
    below k, claimed now. None when their queue is empty. One transaction: two annotators (or two
    processes of one) never get the same last slot of an item."""
    annotator = _name(annotator)
    now = time.time() if now is None else now
    where, params = flt.where()
    candidates = f"""
        SELECT c.id FROM counterfactuals c JOIN trajectories t ON t.id = c.trajectory_id
        WHERE {where}
          AND NOT EXISTS (SELECT 1 FROM annotations a WHERE a.counterfactual_id = c.id AND a.annotator = ?)
          AND NOT EXISTS (SELECT 1 FROM resolutions r WHERE r.counterfactual_id = c.id)
          AND (SELECT COUNT(*) FROM annotations a WHERE a.counterfactual_id = c.id AND a.decision != 'skip')
            + (SELECT COUNT(*) FROM claims k WHERE k.counterfactual_id = c.id AND k.annotator != ?)
            < c.required_decisions"""
    args = [*params, annotator, annotator]
    with store.transaction() as con:
        con.execute("DELETE FROM claims WHERE expires_at < ?", (now,))
        held = con.execute("SELECT counterfactual_id FROM claims WHERE annotator = ?", (annotator,)).fetchone()
        held = held and con.execute(candidates + " AND c.id = ?", [*args, held[0]]).fetchone()  # still matches?
        con.execute("DELETE FROM claims WHERE annotator = ? AND counterfactual_id != ?",
                    (annotator, held[0] if held else -1))
        found = held or con.execute(candidates + " ORDER BY c.id LIMIT 1", args).fetchone()
        if found is None:
            return None
        con.execute("INSERT INTO claims (counterfactual_id, annotator, expires_at) VALUES (?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET expires_at = excluded.expires_at", (found[0], annotator, now + ttl))
        return found[0]


def _name(annotator: str) -> str:
    if not isinstance(annotator, str) or not annotator.strip():
        raise InputError("annotator name must be a non-empty string")
    return annotator.strip()


def _check(decision: str, allowed: tuple[str, ...], edited_text: str | None, what: str) -> None:
    if decision not in allowed:
        raise InputError(f"{what} must be one of {', '.join(allowed)}, got {decision!r}")
    if decision == "edit" and not (edited_text or "").strip():
        raise InputError(f"{what} 'edit' needs the edited counterfactual text")


def _exists(con, item_id: int) -> None:
    if con.execute("SELECT 1 FROM counterfactuals WHERE id = ?", (item_id,)).fetchone() is None:
        raise InputError(f"no counterfactual pair with id {item_id}")


def annotate(store: Store, item_id: int, annotator: str, decision: str, edited_text: str | None = None,
             note: str = "") -> None:
    """Record (or replace) ``annotator``'s decision on an item and release their claim on it."""
    annotator = _name(annotator)
    _check(decision, DECISIONS, edited_text, "decision")
    now = time.time()
    with store.transaction() as con:  # BEGIN IMMEDIATE: the count and the insert are one step for every tab
        _exists(con, item_id)
        if decision != "skip":  # a skip is not a decision
            _not_decided(con, item_id, annotator)
        con.execute(
            "INSERT INTO annotations (counterfactual_id, annotator, decision, edited_text, note, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(counterfactual_id, annotator) DO UPDATE SET "
            "decision = excluded.decision, edited_text = excluded.edited_text, note = excluded.note, "
            "updated_at = excluded.updated_at "
            # a skip (a stale tab, the item shown again) never replaces one's own decision: not a decision itself
            "WHERE excluded.decision != 'skip' OR annotations.decision = 'skip'",
            (item_id, annotator, decision, edited_text if decision == "edit" else None, note or "", now, now))
        con.execute("DELETE FROM claims WHERE counterfactual_id = ? AND annotator = ?", (item_id, annotator))


def _not_decided(con, item_id: int, annotator: str) -> None:
    """An item that already has its k decisions from others takes no new annotator (two annotators deciding
    a k=1 item at once: the second is told, not recorded as a conflict); one's own decision may change."""
    k = con.execute("SELECT required_decisions FROM counterfactuals WHERE id = ?", (item_id,)).fetchone()[0]
    others = [r[0] for r in con.execute("SELECT annotator FROM annotations WHERE counterfactual_id = ? AND "
                                        "annotator != ? AND decision != 'skip' ORDER BY updated_at",
                                        (item_id, annotator))]
    mine = con.execute("SELECT 1 FROM annotations WHERE counterfactual_id = ? AND annotator = ? AND "
                       "decision != 'skip'", (item_id, annotator)).fetchone()
    if not mine and len(others) >= (k or 1):
        raise InputError(f"item {item_id} was decided by {', '.join(others)} while you were reading it (it needs "
                         f"{k or 1} decision{'s' if (k or 1) > 1 else ''}); your decision was not recorded. "
                         "Go on with the next item")


def item(store: Store, item_id: int) -> Item:
    columns, rows = _dicts(store, "SELECT c.id, t.prompt, t.system, t.completion AS original, c.completion AS "
                                  "counterfactual, t.label, c.target, c.method, c.consistency, t.source, "
                                  "c.required_decisions AS required, t.images, c.images AS rejected_images "
                                  "FROM counterfactuals c JOIN trajectories t "
                                  "ON t.id = c.trajectory_id WHERE c.id = ?", (item_id,))
    if not rows:
        raise InputError(f"no counterfactual pair with id {item_id}")
    notes = _read(store, "SELECT annotator, decision, edited_text, note, updated_at FROM annotations "
                         "WHERE counterfactual_id = ? ORDER BY updated_at", (item_id,))
    fields = dict(zip(columns, rows[0], strict=True))
    fields["images"], fields["rejected_images"] = json.loads(fields["images"]), json.loads(fields["rejected_images"])
    return Item(**fields, annotations=notes)


def set_required(store: Store, k: int, flt: QueueFilter = QueueFilter()) -> int:
    """Set k (decisions needed) on the items matching ``flt``; returns how many changed."""
    if k < 1:
        raise InputError(f"required decisions per item must be at least 1, got {k}")
    where, params = flt.where()
    with store.transaction() as con:
        return con.execute(f"UPDATE counterfactuals SET required_decisions = ? WHERE id IN (SELECT c.id FROM "
                           f"counterfactuals c JOIN trajectories t ON t.id = c.trajectory_id WHERE {where})",
                           [k, *params]).rowcount


def filter_options(store: Store, world: str | None = None) -> dict[str, list]:
    """Distinct values for the queue filters (among ``world``'s items, when given)."""
    where, params = QueueFilter(world=world).where()
    items = f"counterfactuals c JOIN trajectories t ON t.id = c.trajectory_id WHERE {where}"
    pick = lambda sql: [r[0] for r in store.query(sql, params) if r[0] is not None]  # noqa: E731
    with store.lock:
        return {"labels": pick(f"SELECT DISTINCT t.label FROM {items} ORDER BY 1"),
                "targets": pick(f"SELECT DISTINCT c.target FROM {items} ORDER BY 1"),
                "methods": pick(f"SELECT DISTINCT c.method FROM {items} ORDER BY 1"),
                "annotators": pick(f"SELECT DISTINCT a.annotator FROM annotations a JOIN {items} "
                                   "AND c.id = a.counterfactual_id ORDER BY 1"),
                # a visual pair is its own source however it came (generated, or imported with rejected_images):
                # the same test as curated_rows, so that each source the editor offers is one the export weighs
                "sources": pick(f"SELECT DISTINCT CASE WHEN c.method = '{IMAGE_SWAP}' OR c.images != t.images "
                                f"THEN '{IMAGE_SWAP}' ELSE t.source END FROM {items} ORDER BY 1")}


# ---------------------------------------------------------------- agreement

@dataclass
class Agreement:
    pairs: pd.DataFrame   # annotator_a, annotator_b, items (rated by both), agreement (share equal), kappa
    fleiss: float         # Fleiss' kappa over items with two or more ratings (NaN if none)
    light: float          # Light's kappa: the mean of the pairwise Cohen's kappas (NaN if none)
    items: int            # items with two or more ratings


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa (Fleiss 1971, Psychological Bulletin 76(5)) for ``counts`` (items, categories), the
    number of raters who put each item in each category; items may have different numbers of raters
    (each item's agreement P_i uses its own n_i). NaN when it is undefined (fewer than one item, or
    every rating in one category)."""
    counts = np.asarray(counts, dtype=float)
    n = counts.sum(axis=1)                                    # (I,) raters per item
    counts, n = counts[n >= 2], n[n >= 2]
    if len(n) == 0:
        return float("nan")
    p_i = ((counts ** 2).sum(axis=1) - n) / (n * (n - 1))     # (I,) agreement on each item
    p_j = counts.sum(axis=0) / n.sum()                        # (C,) share of ratings per category
    p_bar, p_e = p_i.mean(), (p_j ** 2).sum()
    return float("nan") if np.isclose(p_e, 1.0) else float((p_bar - p_e) / (1 - p_e))


def agreement(store: Store, world: str | None = None) -> Agreement:
    """Cohen's kappa (scikit-learn) per annotator pair over the items both rated, Fleiss' kappa and
    Light's kappa overall, over the items of ``world`` (``World.key``; '' for items of no known world; None: every
    world's, a choice the page names). Ratings are accept / reject / edit, an edit by its text (two edits that
    write different counterfactuals disagree, as the conflict list says); skips are not ratings."""
    where, params = ("", []) if world is None else (" AND t.world = ?", [world])
    df = _read(store, "SELECT a.counterfactual_id AS item, a.annotator, a.decision, a.edited_text FROM annotations a "
                      "JOIN counterfactuals c ON c.id = a.counterfactual_id JOIN trajectories t ON t.id = c.trajectory_id "
                      "WHERE a.decision != 'skip'" + where, params)
    if len(df):
        edits = df["decision"] == "edit"
        df.loc[edits, "decision"] = ["edit: " + (text or "").strip() for text in df.loc[edits, "edited_text"]]
    wide = df.pivot(index="item", columns="annotator", values="decision") if len(df) else pd.DataFrame()
    rated = sorted(set(df["decision"])) if len(df) else list(RATED)  # the categories: each edit text its own
    rows = []
    names = list(wide.columns)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = wide[[a, b]].dropna()
            if len(both):
                rows.append({"annotator_a": a, "annotator_b": b, "items": len(both),
                             "agreement": float((both[a] == both[b]).mean()),
                             "kappa": _cohen(both[a], both[b], rated)})
    pairs = pd.DataFrame(rows, columns=["annotator_a", "annotator_b", "items", "agreement", "kappa"])
    counts = np.stack([(wide == c).sum(axis=1).to_numpy() for c in rated], axis=1) if len(wide) else np.zeros((0, 3))
    multi = int((counts.sum(axis=1) >= 2).sum())
    light = float(pairs["kappa"].mean()) if pairs["kappa"].notna().any() else float("nan")
    return Agreement(pairs, fleiss_kappa(counts), light, multi)


def _cohen(a: pd.Series, b: pd.Series, rated: list[str]) -> float:
    if len(set(a) | set(b)) < 2:
        return float("nan")  # one category only: chance agreement is 1 and kappa is undefined
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(cohen_kappa_score(a, b, labels=rated))


# ---------------------------------------------------------------- conflicts and final decisions

def conflicts(store: Store, world: str | None = None) -> pd.DataFrame:
    """One row per decision on an item (of ``world``, when given) whose annotators disagree and that nobody has
    resolved yet."""
    ids = queue(store, QueueFilter(status="conflict", world=world))["id"].tolist()
    if not ids:
        return pd.DataFrame(columns=["id", "target", "annotator", "decision", "edited_text", "note"])
    return _read(store, f"SELECT a.counterfactual_id AS id, c.target, a.annotator, a.decision, a.edited_text, a.note "
                        f"FROM annotations a JOIN counterfactuals c ON c.id = a.counterfactual_id "
                        f"WHERE a.decision != 'skip' AND a.counterfactual_id IN ({', '.join('?' * len(ids))}) "
                        f"ORDER BY a.counterfactual_id, a.annotator", ids)


def resolve(store: Store, item_id: int, decision: str, resolver: str, edited_text: str | None = None,
            note: str = "") -> None:
    """Settle an item: the resolution overrides the annotators' decisions in the export."""
    resolver = _name(resolver)
    _check(decision, RATED, edited_text, "resolution")
    with store.transaction() as con:
        _exists(con, item_id)
        con.execute("INSERT INTO resolutions (counterfactual_id, decision, edited_text, resolver, note, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(counterfactual_id) DO UPDATE SET decision = "
                    "excluded.decision, edited_text = excluded.edited_text, resolver = excluded.resolver, "
                    "note = excluded.note, created_at = excluded.created_at",
                    (item_id, decision, edited_text if decision == "edit" else None, resolver, note, time.time()))


CURATED_COLUMNS = """, c.content_hash AS hash, t.content_hash AS key, t.prompt, t.system, t.completion AS chosen,
       c.completion AS counterfactual, r.edited_text AS resolution_text, a.decision, a.edited_text,
       t.images AS images, c.images AS rejected_images, t.meta AS meta, t.image_hashes AS image_hashes,
       c.image_hashes AS rejected_hashes"""
IMAGE_SWAP = "image_swap"  # the method and the pair source of CPO++'s visual counterfactuals


def curated_rows(store: Store, include_pending: bool = False, world: str | None = None) -> list[dict]:
    """The pairs to export: chosen = the real completion, rejected = the counterfactual (or its edit).
    An item goes in when its resolution, or its k agreeing decisions, say accept or edit (never when
    they say reject); with ``include_pending`` also items that nobody has decided yet. ``images`` are the
    original's, ``rejected_images`` the counterfactual's (the same list for a text counterfactual); an image
    swap's source is ``image_swap``, so that it gets its own weight (CPO++'s visual pairs). ``world``: that world's
    pairs only (None: every world's); ``meta`` is the trajectory's source identifiers (a CCF item's dicom_id...)."""
    out = []
    where, params = QueueFilter(world=world).where()
    columns, rows = _dicts(store, QUEUE_SQL.format(columns=CURATED_COLUMNS, where=where), params)
    for r in (dict(zip(columns, row, strict=True)) for row in rows):  # plain tuples: None stays None (not NaN)
        if r["resolution"] is not None:
            decision, text = r["resolution"], r["resolution_text"]
        elif r["variants"] == 1 and r["decisions"] >= r["required"]:
            decision, text = r["decision"], r["edited_text"]
        elif r["decisions"] == 0 and include_pending:
            decision, text = "accept", None
        else:
            continue
        if decision in ("accept", "edit"):
            rejected = text if decision == "edit" else r["counterfactual"]
            row = {k: r[k] for k in ("id", "hash", "key", "prompt", "system", "chosen", "label", "target", "source",
                                     "method")} | {"rejected": rejected}
            row["images"], row["rejected_images"] = json.loads(r["images"]), json.loads(r["rejected_images"])
            row["meta"] = json.loads(r["meta"] or "{}")
            row["key"], row["hash"] = _content_keys(r)
            if row["rejected_images"] != row["images"]:  # a visual pair, generated or imported
                row["source"] = IMAGE_SWAP
            out.append(row)
    return out


def _content_keys(r: dict) -> tuple[str, str]:
    """The pair's trajectory and counterfactual hashes over what an export writes (text and images, not the world
    or the system turn, which the stored hashes take in): the split and the row order of a snapshot, so the same
    pairs export alike from any world, and as before worlds existed."""
    from core.io.hashing import counterfactual_hash, trajectory_hash

    own, rejected = json.loads(r["image_hashes"]), json.loads(r["rejected_hashes"])
    key = trajectory_hash(r["prompt"], r["chosen"], own)
    return key, counterfactual_hash(key, r["target"], r["counterfactual"], () if rejected == own else rejected)


# ---------------------------------------------------------------- guidelines

def guidelines(store: Store) -> str:
    """The guidelines in force (markdown): the latest saved version, else ``DEFAULT_GUIDELINES``."""
    row = store.query_one("SELECT text FROM guidelines ORDER BY id DESC LIMIT 1")
    return row[0] if row else DEFAULT_GUIDELINES


def save_guidelines(store: Store, text: str, author: str) -> None:
    """Save a new version (the old ones stay in the table)."""
    with store.transaction() as con:
        con.execute("INSERT INTO guidelines (text, author, created_at) VALUES (?, ?, ?)",
                    (text, _name(author), time.time()))
