"""What mapping looks up by point id and may keep between calls: memory points' (skill id, text) for the vote, and
skill points' vectors for token-level matching and for the skills only the vote found. Each is read in at most one
retrieve per batch and is exact under live curation, for the reasons each class gives."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any

import numpy as np

from . import _schema as S
from .store.base import Store, key_id, point_key, vectors_of


@dataclass(slots=True)
class Voters:
    """A batch's nearest memory points, one row per sentence, best first, as arrays: no object per point (a batch
    holds 256 x 136 of them; as objects they kept the garbage collector busy longer than the scoring took, and as
    per-point dicts coding their skills was a Python loop per neighbour). A point's skill and text are codes into
    `skill_ids` and `texts`, the payload table of the cache that filled it (append-only, so the codes stay valid)."""

    scores: np.ndarray  # (sentences, width) similarity, NaN where a row has fewer points
    skills: np.ndarray  # (sentences, width) code into skill_ids, -1 where absent
    slots: np.ndarray  # (sentences, width) code into texts, -1 where absent
    skill_ids: list[str]
    texts: list[str]

    @classmethod
    def empty(cls, rows: int) -> Voters:
        return cls(np.zeros((rows, 0)), np.zeros((rows, 0), dtype=np.int64), np.zeros((rows, 0), dtype=np.int64),
                   [], [])

    @property
    def counts(self) -> np.ndarray:
        return (self.slots >= 0).sum(axis=1)

    def row_texts(self, row: int) -> list[str]:
        return [self.texts[s] for s in self.slots[row][self.slots[row] >= 0].tolist()]

    def row_skill_ids(self, row: int) -> list[str]:
        return [self.skill_ids[c] for c in self.skills[row][self.skills[row] >= 0].tolist()]

    def row_scores(self, row: int) -> list[float]:
        return self.scores[row][self.slots[row] >= 0].tolist()

    def nearest(self, k: int, tie: float) -> Voters:
        """The k best of each row; points tied (within `tie`) at the cut are taken in (skill id, text) order, so
        that the k voters are the same on every backend, whichever tied point an engine saw first."""
        if self.scores.shape[1] <= k:
            return self
        scores, skills, slots = self.scores[:, :k].copy(), self.skills[:, :k].copy(), self.slots[:, :k].copy()
        # NaN (no k+1th point) compares False: no tie there.
        for row in np.flatnonzero(self.scores[:, k] >= self.scores[:, k - 1] - tie).tolist():
            s = self.scores[row]
            cut = s[k - 1]
            head = np.flatnonzero(s > cut + tie).tolist()
            tied = sorted(np.flatnonzero(np.abs(s - cut) <= tie).tolist(),
                          key=lambda i: (self.skill_ids[self.skills[row, i]], self.texts[self.slots[row, i]]))
            kept = head + tied[: k - len(head)]
            scores[row], skills[row], slots[row] = s[kept], self.skills[row, kept], self.slots[row, kept]
        return Voters(scores, skills, slots, self.skill_ids, self.texts)


class _PayloadTable:
    """Memory points' (skill, text) by point key, append-only: a slot, once given, keeps its meaning, so a Voters
    filled from it stays right after the cache moves on to a new table (at capacity)."""

    def __init__(self) -> None:
        self.slot: dict[int, int] = {}
        self.texts: list[str] = []
        self.skill_of_slot = np.zeros(1024, dtype=np.int64)
        self.skill_ids: list[str] = []
        self.skill_code: dict[str, int] = {}

    def slots(self, keys: list[int]) -> np.ndarray:
        """Each key's slot, -1 for a key not in the table."""
        return np.fromiter(map(self.slot.get, keys, repeat(-1, len(keys))), dtype=np.int64, count=len(keys))

    def add(self, entries: list[tuple[int, str, str]]) -> None:
        """(point key, skill id, text) each; the arrays are written before the key is published, so a reader that
        finds a key (without the lock) finds its entry."""
        first = len(self.texts)
        codes = []
        for _, skill, _ in entries:
            code = self.skill_code.get(skill)
            if code is None:
                code = self.skill_code[skill] = len(self.skill_ids)
                self.skill_ids.append(skill)
            codes.append(code)
        if first + len(entries) > len(self.skill_of_slot):
            grown = np.zeros(max(2 * len(self.skill_of_slot), first + len(entries)), dtype=np.int64)
            grown[:first] = self.skill_of_slot[:first]
            self.skill_of_slot = grown
        self.skill_of_slot[first : first + len(entries)] = codes
        self.texts.extend(text for _, _, text in entries)
        self.slot.update((key, first + i) for i, (key, _, _) in enumerate(entries))


class MemoryPayloads:
    """The (skill id, text) of memory points by point key (`point_key`), for the vote. The kNN query then returns
    keys and scores only: each returned point's payload costs Qdrant Edge's binding microseconds to materialise,
    and k is 128.

    Memory point ids are content-addressed (UUIDv5 of tenant, skill and text), so an id's skill and text never
    change: nothing here needs invalidating under live curation (a removed point is simply no longer returned, a
    relabelled sentence is a new id). Misses are fetched in one retrieve. Bounded, thread-safe."""

    FIELDS = (S.F_SKILL_ID, S.F_TEXT)

    def __init__(self, store: Store, capacity: int = 250_000) -> None:
        self.store = store
        self.capacity = capacity
        self._table = _PayloadTable()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def fill(self, results: list[tuple[list[int], list[float]]]) -> Voters:
        """`query_keys_batch`'s results as Voters; a point deleted between the query and the fetch is left out."""
        keys = list(chain.from_iterable(ks for ks, _ in results))
        table = self._table
        slots = table.slots(keys)
        misses = np.flatnonzero(slots < 0)
        self.hits += len(keys) - len(misses)
        self.misses += len(misses)
        if len(misses):
            wanted = {keys[i] for i in misses.tolist()}
            records = self.store.retrieve(S.MEMORY, [key_id(k) for k in wanted], payload=list(self.FIELDS))
            # A point without a text skill id and sentence (another program's, or damaged) does not vote.
            fetched = [(point_key(r.id), r.payload[S.F_SKILL_ID], r.payload[S.F_TEXT]) for r in records
                       if S.has_texts(r.payload, S.F_SKILL_ID, S.F_TEXT)]
            with self._lock:
                table = self._table
                if len(table.texts) + len(fetched) > self.capacity:
                    # A new table (a whole reset: rare, the capacity is above the default memory), holding this
                    # batch's points; a fill in flight keeps the old one, whose codes stay valid.
                    old = table
                    known = {keys[i]: int(s) for i, s in enumerate(slots.tolist()) if s >= 0}
                    table = _PayloadTable()
                    table.add([(key, old.skill_ids[old.skill_of_slot[s]], old.texts[s]) for key, s in known.items()])
                    self._table = table
                table.add([entry for entry in fetched if entry[0] not in table.slot])
            slots = table.slots(keys)
        return self._rows(results, slots, table)

    @staticmethod
    def _copies(row: np.ndarray, slots: np.ndarray, scores: np.ndarray, table: _PayloadTable) -> np.ndarray:
        """Which points repeat, under the same skill, a sentence just before them in their row: a tenant's own copy
        of a global sentence (added, or imported, by the tenant; or added globally after the tenant's) is another
        point with the same text and vector, and voted twice. The one sentence votes once. Equal vectors score
        alike, so a copy sits next to the point it repeats: only such neighbours' texts are compared."""
        copies = np.zeros(len(slots), dtype=bool)
        if len(slots) < 2:
            return copies
        skill = table.skill_of_slot[np.maximum(slots, 0)]
        alike = np.flatnonzero((row[1:] == row[:-1]) & (slots[1:] >= 0) & (slots[:-1] >= 0)
                               & (skill[1:] == skill[:-1]) & (np.abs(scores[1:] - scores[:-1]) <= 1e-5)) + 1
        for i in alike.tolist():
            copies[i] = table.texts[slots[i]] == table.texts[slots[i - 1]]
        return copies

    @staticmethod
    def _rows(results: list[tuple[list[int], list[float]]], slots: np.ndarray, table: _PayloadTable) -> Voters:
        lengths = np.fromiter((len(ks) for ks, _ in results), dtype=np.int64, count=len(results))
        scores = np.fromiter(chain.from_iterable(ss for _, ss in results), dtype=np.float64, count=len(slots))
        row = np.repeat(np.arange(len(results)), lengths)
        # Points found (one deleted since the query is left out, the rest keep their order), each sentence once.
        kept = (slots >= 0) & ~MemoryPayloads._copies(row, slots, scores, table)
        counts = np.bincount(row[kept], minlength=len(results))
        width = int(counts.max(initial=0))
        column = np.arange(int(kept.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        out_scores = np.full((len(results), width), np.nan)
        out_slots = np.full((len(results), width), -1, dtype=np.int64)
        out_scores[row[kept], column] = scores[kept]
        out_slots[row[kept], column] = slots[kept]
        skills = np.where(out_slots >= 0, table.skill_of_slot[np.maximum(out_slots, 0)], -1)
        return Voters(out_scores, skills, out_slots, table.skill_ids, table.texts)


class SkillVectors:
    """Unit vectors of skill points, by (point id, label, updated_at). A skill point's vector is its label's
    embedding (the build embeds labels; curation embeds a new skill's label and re-embeds a renamed one), so the
    key names one vector: a rename is a new key, and the skills query hands over the current label and stamp. The
    stamp covers the instant inside a rename when the point has its new vector and still its old label (two
    writes): a vector read then is filed under the old stamp, which no later read of that point carries
    (curation stamps to the microsecond). A store that embeds more than the label (skill_text
    "label_description") is read afresh on every call. Bounded, thread-safe."""

    FIELDS = (S.F_LABEL, S.F_UPDATED_AT)

    def __init__(self, store: Store, *, cacheable: bool, capacity: int = 100_000) -> None:
        self.store = store
        self.cacheable = cacheable
        self.capacity = capacity
        self._data: dict[tuple[str, str, str], np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def key(cls, point_id: str, payload: dict[str, Any]) -> tuple[str, str, str]:
        return point_id, str(payload.get(S.F_LABEL, "")), str(payload.get(S.F_UPDATED_AT, ""))

    def get(self, keys: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], np.ndarray]:
        """{key: unit vector} for the keys whose point is still as the key says; others are absent."""
        data = self._data if self.cacheable else {}
        out = {k: data[k] for k in keys if k in data}
        missing = sorted({k[0] for k in keys if k not in out})
        if not missing:
            return out
        records = self.store.retrieve(S.SKILLS, missing, with_vectors=True, payload=list(self.FIELDS))
        # A skill point always has its vector: one missing is a damaged store, said so (vectors_of), not skipped.
        matrix = vectors_of(records).astype(np.float32, copy=False) if records else np.zeros((0, 0), np.float32)
        matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        fetched = {self.key(r.id, r.payload): v for r, v in zip(records, matrix)}
        if self.cacheable:
            with self._lock:
                if len(self._data) + len(fetched) > self.capacity:
                    self._data.clear()
                self._data.update(fetched)
        out.update({k: fetched[k] for k in keys if k in fetched})
        return out
