"""Fences: what edits hold shared, so that an operation that must not interleave with them can hold it alone.

- Each tenant's fence: its edits hold it, its deletion holds it alone. No edit lands in the middle of a deletion, or
  after it while it began before: an import's later chunks re-made the deleted tenant, and a hide mark set after the
  deletion's sweep passed to a tenant made later under the name. A deletion moves the tenant's epoch on: an edit
  made of many writes (an import) reads it at its start and stops when it has moved.
- The store's fence (`ALL`): every edit holds it, a tenant's deletion too; a rebuild holds it alone while it carries
  the curated data into the new build and swaps it in (an edit made meanwhile was not carried: the swap lost it),
  and a backup while it reads the store (an edit made meanwhile could be half in it: a moved sentence in neither
  place).

An edit waits for a fence held alone (`wait` seconds at most, then ConflictError: try again); what holds one alone
waits for the edits under way (likewise). Re-entrant within a thread: an edit inside an edit holds nothing more.

In one process (the embedded store and qdrant-client's local mode, which one process at a time opens), a fence is a
condition variable. On a server, across processes and replicas: each edit writes a lease point of its own in the
meta collection and then reads the fence points; what holds a fence alone writes its fence point (a lease, renewed
while held, that keeps the epoch) and then counts the edits' points. Each writes before it reads the other's, so at
least one of them sees the other.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from .._errors import ConflictError
from . import locks

if TYPE_CHECKING:
    from .client import QdrantClientStore

ALL = "*"
"""The store's fence (no tenant's name can be `*`)."""
log = logging.getLogger("knnbe_qdrant.fences")


class Held:
    """A fence held alone. In one process it holds until released; on a server it is a lease, renewed while held,
    which lapses if the server refuses the renewals for a whole lease: edits may then come in. `check()` before a
    step that must not overlap them (a rebuild's swap); the hold checks itself when released."""

    def __init__(self, name: str, expires: float = math.inf) -> None:
        self.name = name
        self.expires = expires  # time.time() at which the lease runs out
        self.lost = False  # renewed too late: another holder may have taken it meanwhile

    def check(self, margin: float | None = None) -> None:
        margin = locks.LEASE_S / 6 if margin is None else margin
        if self.lost or time.time() + margin >= self.expires:
            raise self.lapse()

    def lapse(self) -> ConflictError:
        who = "the store's edits" if self.name == ALL else f"tenant {self.name!r}'s edits"
        return ConflictError(f"the fence that held {who} back lapsed: the server refused its renewal for a whole "
                             f"lease ({locks.LEASE_S:.0f} s), so edits may have come in; run it again")


def _closed(name: str, wait: float) -> str:
    if name == ALL:
        return (f"the store is being rebuilt or backed up: its curated data is read whole (carried into a new build, "
                f"or written to a backup), and edits wait until that is done (waited {wait:.0f} s); try again")
    return f"tenant {name!r} is being deleted (waited {wait:.0f} s); try again once it is gone"


def _busy(name: str, wait: float) -> str:
    who = "the store" if name == ALL else f"tenant {name!r}"
    return f"{who} has edits under way that did not finish in {wait:.0f} s; try again"


# ---- in one process ----------------------------------------------------------------------------------------------
class _Fence:
    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.writers = 0
        self.closed = False
        self.epoch = 0


_fences: dict[tuple[str, str], _Fence] = {}  # kept: one small object per tenant ever edited, with its epoch
_fences_lock = threading.Lock()
_holding = threading.local()  # the edit fences this thread holds


def _fence(location: str, name: str) -> _Fence:
    with _fences_lock:
        return _fences.setdefault((location, name), _Fence())


@contextmanager
def _reentrant(key: tuple, acquire: Callable[[], Iterator[int]]) -> Iterator[int]:
    holds: dict[tuple, int] = _holding.__dict__.setdefault("holds", {})
    if key in holds:  # held by this thread already: the outer hold spans this edit
        yield holds[key]
        return
    with contextmanager(acquire)() as epoch:
        holds[key] = epoch
        try:
            yield epoch
        finally:
            del holds[key]


@contextmanager
def _shared(location: str, name: str, wait: float) -> Iterator[int]:
    fence = _fence(location, name)
    with fence.changed:
        if not fence.changed.wait_for(lambda: not fence.closed, timeout=wait):
            raise ConflictError(_closed(name, wait))
        fence.writers += 1
        epoch = fence.epoch
    try:
        yield epoch
    finally:
        with fence.changed:
            fence.writers -= 1
            fence.changed.notify_all()


@contextmanager
def process_edit(location: str, tenant: str | None, wait: float = locks.LOCK_WAIT_S) -> Iterator[int]:
    """An edit of `tenant`'s layer (None: the global layer): the store's fence and the tenant's, shared. Yields
    the tenant's epoch (0 for the global layer)."""
    def acquire() -> Iterator[int]:
        with _shared(location, ALL, wait):
            if tenant is None:
                yield 0
                return
            with _shared(location, tenant, wait) as epoch:
                yield epoch

    with _reentrant(("process", location, tenant), acquire) as epoch:
        yield epoch


@contextmanager
def process_alone(location: str, name: str, wait: float = locks.LOCK_WAIT_S) -> Iterator[Held]:
    """Hold the fence `name` alone: the edits under way finish first, those that come wait until it is released.
    Its epoch moves on when it is released."""
    fence = _fence(location, name)
    with fence.changed:
        if not fence.changed.wait_for(lambda: not fence.closed, timeout=wait):
            raise ConflictError(_closed(name, wait))
        fence.closed = True  # from here no edit starts; those under way are waited for
        if not fence.changed.wait_for(lambda: fence.writers == 0, timeout=wait):
            fence.closed = False
            fence.changed.notify_all()
            raise ConflictError(_busy(name, wait))
    try:
        yield Held(name)
    finally:
        with fence.changed:
            fence.closed = False
            fence.epoch += 1
            fence.changed.notify_all()


@contextmanager
def process_tenant_deletion(location: str, tenant: str, wait: float = locks.LOCK_WAIT_S) -> Iterator[Held]:
    """A deletion is an edit of the store (a rebuild must not carry what it is deleting) that holds its tenant's
    fence alone."""
    with process_edit(location, None, wait), process_alone(location, tenant, wait) as held:
        yield held


# ---- across processes, on a server -------------------------------------------------------------------------------
def _fence_point(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "knnbe-qdrant/tenant-fence/" + name))


def _live(payload: dict[str, Any]) -> bool:
    return float(payload.get("expires", 0)) >= time.time()


@contextmanager
def lease_edit(store: QdrantClientStore, tenant: str | None, wait: float = locks.LOCK_WAIT_S) -> Iterator[int]:
    """`process_edit` across processes: this edit's lease point, then the fence points read."""
    from qdrant_client import models

    def acquire() -> Iterator[int]:
        meta, me, started, attempt = store.meta_collection(), str(uuid.uuid4()), time.monotonic(), 0
        names = [ALL] if tenant is None else [ALL, tenant]
        while True:
            until = time.time() + locks.LEASE_S
            writer = {"kind": "edit", "tenant": tenant or "", "expires": until}
            store._call(store.client.upsert, meta, points=[models.PointStruct(id=me, vector={}, payload=writer)],
                        wait=True)
            found = {str(r.id): r.payload or {} for r in store._call(
                store.client.retrieve, meta, [_fence_point(n) for n in names], with_payload=True)}
            fences = {n: found.get(_fence_point(n), {}) for n in names}
            closed = [n for n in names if _live(fences[n])]
            if not closed:
                break
            store._call(store.client.delete, meta, points_selector=models.PointIdsList(points=[me]), wait=True)
            if time.monotonic() - started > wait:
                raise ConflictError(_closed(closed[0], wait))
            time.sleep(min(0.05, 0.002 * 2**attempt))
            attempt += 1
        released = threading.Event()

        def renew() -> None:  # an edit slower than a lease (a big chunk, a slow server) keeps its hold
            expires = until
            while not released.wait(locks.LEASE_S / 3):
                asked = time.time()
                try:
                    store._call(store.client.upsert, meta, wait=True, points=[models.PointStruct(
                        id=me, vector={}, payload={**writer, "expires": asked + locks.LEASE_S})])
                    expires = asked + locks.LEASE_S
                except Exception as exc:  # any failure: the next turn tries again, until the lease ran out
                    log.warning("could not renew an edit's lease on %r: %s", tenant or ALL, exc)
                    if time.time() >= expires:  # lost: renewed now, it would come back after a deletion began
                        return

        renewer = threading.Thread(target=renew, name="edit lease renewal", daemon=True)
        renewer.start()
        try:
            yield int(fences[names[-1]].get("epoch", 0)) if tenant is not None else 0
        finally:
            released.set()
            renewer.join()  # before the point goes: a renewal after the delete would bring it back
            store._call(store.client.delete, meta, points_selector=models.PointIdsList(points=[me]), wait=True)

    with _reentrant(("lease", store.url, store.prefix, tenant), acquire) as epoch:
        yield epoch


@contextmanager
def lease_alone(store: QdrantClientStore, name: str, wait: float = locks.LOCK_WAIT_S) -> Iterator[Held]:
    """`process_alone` across processes: the fence point taken where free (its epoch carried over, and a move of
    it meanwhile noticed), renewed while held, then the edits' lease points counted until none is live."""
    from qdrant_client import models

    meta, point = store.meta_collection(), _fence_point(name)
    token, started, attempt = uuid.uuid4().hex, time.monotonic(), 0

    def fence() -> dict:
        found = store._call(store.client.retrieve, meta, [point], with_payload=True)
        return (found[0].payload or {}) if found else {}

    def put(expires: float, epoch: int, where: models.Filter) -> None:
        payload = {"kind": "fence", "name": name, "token": token if expires else "", "expires": expires,
                   "epoch": epoch}
        store._call(store.client.upsert, meta, points=[models.PointStruct(id=point, vector={}, payload=payload)],
                    update_filter=where, wait=True)

    while True:
        epoch, now = int(fence().get("epoch", 0)), time.time()
        free = models.Filter(must=[models.FieldCondition(key="expires", range=models.Range(lt=now)),
                                   models.FieldCondition(key="epoch", match=models.MatchValue(value=epoch))])
        put(now + locks.LEASE_S, epoch, free)
        if fence().get("token") == token:
            break
        if time.monotonic() - started > wait:
            raise ConflictError(_closed(name, wait))
        time.sleep(min(0.05, 0.002 * 2**attempt))
        attempt += 1
    mine = models.Filter(must=[models.FieldCondition(key="token", match=models.MatchValue(value=token))])
    released = threading.Event()
    held = Held(name, time.time() + locks.LEASE_S)

    def renew() -> None:  # a deletion or a carry can outlast one lease; a holder that died stops renewing
        pause = locks.LEASE_S / 3
        while not released.wait(pause):
            asked = time.time()
            try:
                put(asked + locks.LEASE_S, epoch, mine)
                still = fence().get("token") == token
            except Exception as exc:  # any failure: try again soon; the holder checks the lease
                log.warning("could not renew the fence %r (it runs out in %.1f s): %s", name,
                            held.expires - time.time(), exc)
                pause = min(1.0, locks.LEASE_S / 30)
                continue
            held.lost = held.lost or not still or asked > held.expires
            held.expires = asked + locks.LEASE_S if still else held.expires
            pause = locks.LEASE_S / 3

    renewer = threading.Thread(target=renew, name=f"fence {name} renewal", daemon=True)
    renewer.start()
    with ExitStack() as stack:
        stack.callback(renewer.join)
        stack.callback(released.set)
        edits = [models.FieldCondition(key="kind", match=models.MatchValue(value="edit"))]
        if name != ALL:
            edits.append(models.FieldCondition(key="tenant", match=models.MatchValue(value=name)))
        dead = models.Filter(must=[*edits, models.FieldCondition(key="expires", range=models.Range(lt=time.time()))])
        store._call(store.client.delete, meta, points_selector=models.FilterSelector(filter=dead), wait=True)
        while True:
            live = models.Filter(must=[*edits, models.FieldCondition(key="expires",
                                                                     range=models.Range(gte=time.time()))])
            if not store._call(store.client.count, meta, count_filter=live, exact=True).count:
                break
            if time.monotonic() - started > wait:  # the fence goes as it was: nothing was done
                released.set()
                renewer.join()
                put(0, epoch, mine)
                raise ConflictError(_busy(name, wait))
            time.sleep(0.02)
        try:
            yield held
        finally:
            released.set()
            renewer.join()
            ran_out = held.lost or time.time() >= held.expires
            put(0, epoch + 1, mine)
    if ran_out:  # what ran while it was held may have met edits: said, though it is done
        raise held.lapse()


@contextmanager
def lease_tenant_deletion(store: QdrantClientStore, tenant: str, wait: float = locks.LOCK_WAIT_S) -> Iterator[Held]:
    with lease_edit(store, None, wait), lease_alone(store, tenant, wait) as held:
        yield held
