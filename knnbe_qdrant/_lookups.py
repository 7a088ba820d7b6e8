"""What mapping looks up by point id and may keep between calls: memory points' (skill id, text) for the vote, and
skill points' vectors for token-level matching and for the skills only the vote found. Each is read in at most one
retrieve per batch and is exact under live curation, for the reasons each class gives."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _schema as S
from .store.base import Hit, Store, vectors_of


class MemoryPayloads:
    """The (skill id, text) of memory points by point id, for the vote. The kNN query then returns ids and scores
    only: each returned point's payload costs Qdrant Edge's binding microseconds to materialise, and k is 128.

    Memory point ids are content-addressed (UUIDv5 of tenant, skill and text), so an id's skill and text never
    change: nothing here needs invalidating under live curation (a removed point is simply no longer returned, a
    relabelled sentence is a new id). Misses are fetched in one retrieve. Bounded, thread-safe."""

    FIELDS = (S.F_SKILL_ID, S.F_TEXT)

    def __init__(self, store: Store, capacity: int = 250_000) -> None:
        self.store = store
        self.capacity = capacity
        self._data: dict[Any, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def fill(self, hit_lists: list[list[Hit]]) -> list[list[Hit]]:
        """The hits with their payloads set; a point deleted between the query and the fetch is left out."""
        data = self._data
        missing: dict[str, Any] = {}  # id string -> key, for the retrieve
        unfilled: list[tuple[Hit, Any]] = []
        n = 0
        for hits in hit_lists:
            n += len(hits)
            for h in hits:
                key = h.key  # builds a UUID on Edge: read once per hit
                payload = data.get(key)
                if payload is None:
                    missing[str(key)] = key
                    unfilled.append((h, key))
                else:
                    h.payload = payload
        self.hits += n - len(unfilled)
        self.misses += len(unfilled)
        if not unfilled:
            return hit_lists
        records = self.store.retrieve(S.MEMORY, list(missing), payload=list(self.FIELDS))
        with self._lock:
            if len(data) + len(records) > self.capacity:
                data.clear()  # a whole reset: rare (the capacity is above the default memory), and O(1) per hit
            fetched = {missing[r.id]: {f: r.payload.get(f) for f in self.FIELDS} for r in records}
            data.update(fetched)
        for h, key in unfilled:
            h.payload = fetched.get(key) or {}
        return [[h for h in hits if h.payload] for hits in hit_lists]


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
