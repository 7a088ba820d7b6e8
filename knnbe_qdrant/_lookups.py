"""What mapping looks up by point id and may keep between calls: memory points' (skill id, text) for the vote, and
skill points' vectors for token-level matching and for the skills only the vote found. Each is read in at most one
retrieve per batch and is exact under live curation, for the reasons each class gives."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _schema as S
from .store.base import Store, key_id, point_key, vectors_of


@dataclass(slots=True)
class Neighbours:
    """One sentence's nearest memory points, best first, as parallel lists: their similarities and their
    (skill id, text) payloads. Not one object per point: a batch holds 256 x 136 of them, and as objects they kept
    the garbage collector's full passes busy longer than the scoring took (measured: 0.4 ms per sentence)."""

    scores: list[float]
    payloads: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.scores)


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
        self._data: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def fill(self, results: list[tuple[list[int], list[float]]]) -> list[Neighbours]:
        """`query_keys_batch`'s results with their payloads; a point deleted between the query and the fetch is
        left out."""
        data = self._data
        rows = [[data.get(key) for key in keys] for keys, _ in results]
        missing = [key for (keys, _), row in zip(results, rows) for key, payload in zip(keys, row) if payload is None]
        self.hits += sum(len(keys) for keys, _ in results) - len(missing)
        self.misses += len(missing)
        if not missing:
            return [Neighbours(scores, row) for (_, scores), row in zip(results, rows)]  # type: ignore[arg-type]
        records = self.store.retrieve(S.MEMORY, [key_id(k) for k in set(missing)], payload=list(self.FIELDS))
        fetched = {point_key(r.id): {f: r.payload.get(f) for f in self.FIELDS} for r in records}
        with self._lock:
            if len(data) + len(fetched) > self.capacity:
                data.clear()  # a whole reset: rare (the capacity is above the default memory), and O(1) per hit
            data.update(fetched)
        out = []
        for (keys, scores), row in zip(results, rows):
            if None not in row:
                out.append(Neighbours(scores, row))  # type: ignore[arg-type]
                continue
            filled = [p if p is not None else fetched.get(k) for k, p in zip(keys, row)]
            kept = [i for i, p in enumerate(filled) if p]
            out.append(Neighbours([scores[i] for i in kept], [filled[i] for i in kept]))  # type: ignore[misc]
        return out


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
