"""Per-item locks, so that an edit made of several writes (check, then write; write the new point, then delete the
old one) is linearizable against every other edit of the same item: a skill id, a memory sentence.

- In one process (the embedded store, which Qdrant Edge lets only one process open, and qdrant-client's local
  mode, likewise): a lock per item, shared by every store object of that location in the process.
- Across processes and service replicas on a Qdrant server: a lease, a point of the meta collection written with a
  conditional upsert (inserted where absent or expired, left alone where another holder's lease is live) and read
  back: the holder is whoever's token the point carries. See QdrantClientStore.item_lock.

A lock that cannot be had within `wait` seconds is ConflictError: another curator is editing that item.

A tenant has a fence besides: its edits hold it shared, its deletion exclusively, so that no edit lands in the middle
of a deletion or after it while it began before (an import's later chunks re-creating the tenant, a hide mark set
after the deletion's sweep and inherited by a tenant made later under the name). A deletion also moves the tenant's
epoch on: an edit made of many writes (an import) reads it at its start and stops when it has moved.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
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


def _deleting(tenant: str, wait: float) -> str:
    return f"tenant {tenant!r} is being deleted (for {wait:.0f} s now); try again once it is gone"


def _writing(tenant: str, wait: float) -> str:
    return f"tenant {tenant!r} has edits under way that did not finish in {wait:.0f} s; delete it again"


class _Fence:
    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.writers = 0
        self.deleting = False
        self.epoch = 0


_fences: dict[tuple[str, str], _Fence] = {}  # kept: one small object per tenant ever edited, and its epoch
_holding = threading.local()  # fences this thread holds shared: an edit within an edit does not wait on a deletion


def _fence(location: str, tenant: str) -> _Fence:
    with _registry_lock:
        return _fences.setdefault((location, tenant), _Fence())


@contextmanager
def _reentrant(key: tuple, acquire: Callable[[], Iterator[int]]) -> Iterator[int]:
    holds: dict[tuple, int] = _holding.__dict__.setdefault("holds", {})
    if key in holds:  # already held by this thread: the outer hold spans this edit
        yield holds[key]
        return
    with contextmanager(acquire)() as epoch:
        holds[key] = epoch
        try:
            yield epoch
        finally:
            del holds[key]


@contextmanager
def process_tenant_writes(location: str, tenant: str, wait: float = LOCK_WAIT_S) -> Iterator[int]:
    """Hold `tenant`'s fence shared for an edit; yields its epoch. Waits while the tenant is being deleted."""
    fence = _fence(location, tenant)

    def acquire() -> Iterator[int]:
        with fence.changed:
            if not fence.changed.wait_for(lambda: not fence.deleting, timeout=wait):
                raise ConflictError(_deleting(tenant, wait))
            fence.writers += 1
            epoch = fence.epoch
        try:
            yield epoch
        finally:
            with fence.changed:
                fence.writers -= 1
                fence.changed.notify_all()

    with _reentrant(("process", location, tenant), acquire) as epoch:
        yield epoch


@contextmanager
def process_tenant_deletion(location: str, tenant: str, wait: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold `tenant`'s fence exclusively: edits under way finish first, new ones wait until the deletion is done."""
    fence = _fence(location, tenant)
    with fence.changed:
        if not fence.changed.wait_for(lambda: not fence.deleting, timeout=wait):
            raise ConflictError(_deleting(tenant, wait))
        fence.deleting = True  # from here no edit starts; those under way are waited for
        if not fence.changed.wait_for(lambda: fence.writers == 0, timeout=wait):
            fence.deleting = False
            fence.changed.notify_all()
            raise ConflictError(_writing(tenant, wait))
    try:
        yield
    finally:
        with fence.changed:
            fence.deleting = False
            fence.epoch += 1
            fence.changed.notify_all()


def _fence_point(tenant: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "knnbe-qdrant/tenant-fence/" + tenant))


@contextmanager
def lease_tenant_writes(store: QdrantClientStore, tenant: str, wait: float = LOCK_WAIT_S) -> Iterator[int]:
    """The fence across processes and replicas. An edit writes a point of its own (a writer's lease) and then
    reads the tenant's fence point; a deletion writes the fence point and then counts the writers' points. Each
    writes before it reads the other's, so at least one of them sees the other."""
    from qdrant_client import models

    def acquire() -> Iterator[int]:
        meta, me, started, attempt = store.meta_collection(), str(uuid.uuid4()), time.monotonic(), 0
        while True:
            writer = {"kind": "tenant-writer", "tenant": tenant, "expires": time.time() + LEASE_S}
            store._call(store.client.upsert, meta, points=[models.PointStruct(id=me, vector={}, payload=writer)],
                        wait=True)
            found = store._call(store.client.retrieve, meta, [_fence_point(tenant)], with_payload=True)
            fence = (found[0].payload or {}) if found else {}
            if float(fence.get("expires", 0)) < time.time():
                break
            store._call(store.client.delete, meta, points_selector=models.PointIdsList(points=[me]), wait=True)
            if time.monotonic() - started > wait:
                raise ConflictError(_deleting(tenant, wait))
            time.sleep(min(0.05, 0.002 * 2**attempt))
            attempt += 1
        try:
            yield int(fence.get("epoch", 0))
        finally:
            store._call(store.client.delete, meta, points_selector=models.PointIdsList(points=[me]), wait=True)

    with _reentrant(("lease", store.url, store.prefix, tenant), acquire) as epoch:
        yield epoch


@contextmanager
def lease_tenant_deletion(store: QdrantClientStore, tenant: str, wait: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the fence point (a lease, like an item's, that keeps the tenant's epoch), then wait for the writers'
    leases to go."""
    from qdrant_client import models

    meta, point = store.meta_collection(), _fence_point(tenant)
    token, started, attempt = uuid.uuid4().hex, time.monotonic(), 0

    def fence() -> dict:
        found = store._call(store.client.retrieve, meta, [point], with_payload=True)
        return (found[0].payload or {}) if found else {}

    def put(payload: dict, where: models.Filter | None) -> None:
        store._call(store.client.upsert, meta, points=[models.PointStruct(id=point, vector={}, payload=payload)],
                    update_filter=where, wait=True)

    def timed_out() -> bool:
        return time.monotonic() - started > wait

    while True:  # the fence point: taken where free, its epoch carried over (and a move of it meanwhile noticed)
        epoch, now = int(fence().get("epoch", 0)), time.time()
        free = models.Filter(must=[models.FieldCondition(key="expires", range=models.Range(lt=now)),
                                   models.FieldCondition(key="epoch", match=models.MatchValue(value=epoch))])
        put({"kind": "tenant-fence", "tenant": tenant, "token": token, "expires": now + LEASE_S, "epoch": epoch}, free)
        if fence().get("token") == token:
            break
        if timed_out():
            raise ConflictError(_deleting(tenant, wait))
        time.sleep(min(0.05, 0.002 * 2**attempt))
        attempt += 1
    mine = models.Filter(must=[models.FieldCondition(key="token", match=models.MatchValue(value=token))])
    writers = [models.FieldCondition(key="kind", match=models.MatchValue(value="tenant-writer")),
               models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant))]
    dead = models.Filter(must=[*writers, models.FieldCondition(key="expires", range=models.Range(lt=time.time()))])
    store._call(store.client.delete, meta, points_selector=models.FilterSelector(filter=dead), wait=True)  # died
    while True:
        live = models.Filter(must=[*writers, models.FieldCondition(key="expires", range=models.Range(gte=time.time()))])
        if not store._call(store.client.count, meta, count_filter=live, exact=True).count:
            break
        if timed_out():  # the fence goes as it was: nothing was deleted
            put({"kind": "tenant-fence", "tenant": tenant, "token": "", "expires": 0, "epoch": epoch}, mine)
            raise ConflictError(_writing(tenant, wait))
        time.sleep(0.02)
    try:
        yield
    finally:
        put({"kind": "tenant-fence", "tenant": tenant, "token": "", "expires": 0, "epoch": epoch + 1}, mine)
