"""Per-item locks, so that an edit made of several writes (check, then write; write the new point, then delete the
old one) is linearizable against every other edit of the same item: a skill id, a memory sentence.

- In one process (the embedded store, which Qdrant Edge lets only one process open, and qdrant-client's local
  mode, likewise): a lock per item, shared by every store object of that location in the process.
- Across processes and service replicas on a Qdrant server: a lease, a point of the meta collection written with a
  conditional upsert (inserted where absent or expired, left alone where another holder's lease is live) and read
  back: the holder is whoever's token the point carries. See QdrantClientStore.item_lock.

A lock that cannot be had within `wait` seconds is ConflictError: another curator is editing that item.

Edits also pass fences, held shared by edits and alone by what must not interleave with any of them (store.fences).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .._errors import ConflictError

if TYPE_CHECKING:
    from .client import QdrantClientStore

LOCK_WAIT_S = 10.0
"""How long an edit waits for another edit of the same item before it is refused."""

LEASE_S = 30.0
"""How long a lease on a server holds without being released: a holder that died frees the item after this."""

_registry: dict[tuple[str, tuple[str, ...]], list] = {}  # (location, key) -> [lock, users]
_registry_lock = threading.Lock()


def describe_item(key: tuple[str, ...]) -> str:
    kind, *rest = key
    return f"{kind} {' / '.join(repr(part) for part in rest)}"


def _held(key: tuple[str, ...], wait: float) -> str:
    return f"another edit of {describe_item(key)} has held it for {wait:.0f} s; try again"


@contextmanager
def process_lock(location: str, key: tuple[str, ...], wait: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the item `key` of the store at `location` against this process's other threads."""
    with _registry_lock:
        entry = _registry.setdefault((location, key), [threading.Lock(), 0])
        entry[1] += 1
    try:
        if not entry[0].acquire(timeout=wait):
            raise ConflictError(_held(key, wait))
        try:
            yield
        finally:
            entry[0].release()
    finally:
        with _registry_lock:
            entry[1] -= 1
            if entry[1] == 0:
                _registry.pop((location, key), None)


@contextmanager
def lease(store: QdrantClientStore, key: tuple[str, ...], wait: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the item `key` across processes and replicas: a meta point upserted only where it is absent or its
    lease expired (Qdrant's conditional update), then read back to see whose token it carries."""
    from qdrant_client import models

    meta = store.meta_collection()
    point = str(uuid.uuid5(uuid.NAMESPACE_URL, "knnbe-qdrant/lock/" + "\x1f".join(key)))
    token, started, attempt = uuid.uuid4().hex, time.monotonic(), 0
    while True:
        now = time.time()
        free = models.Filter(must=[models.FieldCondition(key="expires", range=models.Range(lt=now))])
        held = {"kind": "lock", "token": token, "expires": now + LEASE_S}
        store._call(store.client.upsert, meta, points=[models.PointStruct(id=point, vector={}, payload=held)],
                    update_filter=free, wait=True)
        found = store._call(store.client.retrieve, meta, [point], with_payload=["token"])
        if found and (found[0].payload or {}).get("token") == token:
            break
        if time.monotonic() - started > wait:
            raise ConflictError(_held(key, wait))
        time.sleep(min(0.05, 0.002 * 2**attempt))
        attempt += 1
    try:
        yield
    finally:  # only our own lease goes: one that expired and was taken over meanwhile stays its new holder's
        mine = models.Filter(must=[models.HasIdCondition(has_id=[point]),
                                   models.FieldCondition(key="token", match=models.MatchValue(value=token))])
        store._call(store.client.delete, meta, points_selector=models.FilterSelector(filter=mine), wait=True)

