"""The check every store gets when it is opened: what its manifest promises, against what the engine holds, by a
sample spread over each whole collection. Damage found here, or by a read later (see EdgeStore._reading), is one
StoreCorruptError whose message ends with the way out that keeps the curated data (base.RECOVERY)."""

from __future__ import annotations

import random
import time
import uuid
from typing import TYPE_CHECKING

import numpy as np

from .._schema import COLLECTIONS, F_LABEL, F_SKILL_ID, F_TENANT, F_TEXT, MEMORY, SKILLS, Manifest

if TYPE_CHECKING:  # base calls this module; at run time it needs nothing of base's
    from .base import Record, Store

_TEXT_FIELDS = {SKILLS: F_LABEL, MEMORY: F_TEXT}


def verify(store: Store, manifest: Manifest, *, sample: int = 64) -> None:
    """Refuse a store whose engine no longer holds what its manifest promises: a collection emptied or shrunk
    to under half of what was built (a lost segment); sampled points, spread over the whole id space (not the
    first page), that lack their vector or payload, or whose vectors are not unit vectors (a damaged vector
    file); or an index that no longer finds a stored vector itself (damaged quantized data or HNSW graph).
    Costs a count, a few small scrolls, one retrieve and one small batched query per collection."""
    for collection in COLLECTIONS:
        promised = int(manifest.counts.get(collection, 0) or 0)
        held = store.count(collection)
        if promised and held < promised / 2:
            raise store.damaged(f"its manifest promises {promised} points in {collection!r}, the engine "
                                f"holds {held}")
        ids = _sample_ids(store, collection, sample) if held else []
        records = store.retrieve(collection, ids, with_vectors=True)
        suspect = [r.id for r in records if point_problem(r, collection)]
        if suspect:  # read again: a point being rewritten or deleted right now is no damage; damage stays
            time.sleep(0.05)
            records = [r for r in records if r.id not in suspect] + store.retrieve(collection, suspect,
                                                                                   with_vectors=True)
        problems = [p for r in records if (p := point_problem(r, collection))]
        if problems:
            raise store.damaged(f"{len(problems)} of {len(records)} sampled points of {collection!r} have "
                                f"{' or '.join(sorted(set(problems)))}")
        probes = [r for r in records if r.vector is not None][:8]
        if not probes:
            continue
        found = store.query_batch(collection, np.stack([_vector(r) for r in probes]), 1, payload=False)
        lost = [r.id for r, hits in zip(probes, found) if not hits or hits[0].score < 0.99]
        if lost and store.retrieve(collection, lost, payload=False):  # not merely deleted since it was sampled
            raise store.damaged(f"its index of {collection!r} no longer finds stored vectors (damaged quantized "
                                "data or graph)")



def _sample_ids(store: Store, collection: str, n: int) -> list[str]:
    """About `n` point ids spread over the collection: short scrolls from random places in the id space
    (point ids are UUIDs, and a scroll runs in id order from its offset)."""
    rng = random.Random()
    ids: list[str] = []
    per = max(1, n // 8)
    for _ in range(8):
        offset = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        ids += [r.id for r in store.scroll_page(collection, offset=offset, limit=per)]
    if len(ids) < per:  # the offsets all fell after the last point
        ids += [r.id for r in store.scroll_page(collection, offset=None, limit=per)]
    return list(dict.fromkeys(ids))


def _vector(record: Record) -> np.ndarray:
    assert record.vector is not None
    return record.vector


def point_problem(record: Record, collection: str) -> str | None:
    """What makes this point of `collection` damage, or None: the check of a store's sample when it is opened, of
    every point a backup writes, and of every point of a backup before a restore writes any."""
    vector = record.vector
    if vector is None or not vector.size:
        return "no vector"
    with np.errstate(all="ignore"):  # a damaged file's bytes may read as huge floats, inf or NaN
        squared = float(np.dot(vector, vector))
    if not 0.98**2 < squared < 1.02**2:  # NaN fails this too
        return "a vector that is not a unit vector"
    required = (F_TENANT, F_SKILL_ID, _TEXT_FIELDS[collection])
    if not all(isinstance(record.payload.get(f), str) for f in required):
        return f"lost payload fields (of {list(required)})"
    return None
