"""Quotas: how many points of its own a tenant may hold, so that one tenant cannot fill the store every other tenant
maps against (its disk and memory, and the memory query all tenants share). The service sets them (`serve
--tenant-max-skills`, `--tenant-max-sentences`); the library and the command line have none unless given one
(`Curator.quota`). The global layer has none.

Counted, and the count kept a second: an add counts the tenant's points in the store while it holds the tenant's
quota lock (an item lock, so across replicas on a server too), then adds to that count for a second, with what it
adds and what this process removes. Concurrent adds in one process never take a tenant past its quota. A count of
100,000 points holds Python's lock for about 10 ms (Edge's binding), so counting at every add let a tenant at its
quota, sending adds that are all refused, take that lock from every other tenant's mapping; now it counts at most
once a second. Across replicas of the service on a server, what the others added in that second is seen at the next
count: the quota may be passed by that much, not more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import _schema as S
from ._errors import InvalidInputError, QuotaExceededError
from .store.base import Store
from .store.documents import tenant_audit

_WHAT = {  # what a refusal calls the points, the service's flag, and the way out
    S.SKILLS: ("skills", "--tenant-max-skills",
               "retired skills count too, as they stay stored: ask the operator to raise the quota"),
    S.MEMORY: ("memory sentences", "--tenant-max-sentences",
               "remove some first, or ask the operator to raise the quota"),
}


@dataclass(frozen=True)
class Quota:
    """At most `skills` skills and `sentences` memory sentences of its own per tenant, and `audit_entries` in its
    audit log (the service's and the command line's edits each add one); None: no limit."""

    skills: int | None = None
    sentences: int | None = None
    audit_entries: int | None = None

    def __post_init__(self) -> None:
        for name in ("skills", "sentences", "audit_entries"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidInputError(f"quota {name}: {value!r}; a whole number >= 1, or None for no limit")

    def limit(self, collection: str) -> int | None:
        return self.skills if collection == S.SKILLS else self.sentences


DEFAULT_QUOTA = Quota(skills=10_000, sentences=100_000, audit_entries=1_000_000)
"""The service's default: about as many sentences as the shipped memory's ESCO layer has (129,831), a tenant's
own taxonomy of 10,000 skills, and a million edits in its audit log (an entry is 0.2 to 0.6 KB, and the log of
every edit keeps a copy: at most about 1 GB of disk a tenant). `serve --tenant-max-skills 0 --tenant-max-sentences
0 --tenant-max-audit-entries 0` lifts them."""


@contextmanager
def audit_room(store: Store, quota: Quota | None, tenant: str | None) -> Iterator[None]:
    """Hold a place in the tenant's audit log across an edit and its entry; QuotaExceededError, nothing written,
    where the log and the edits under way fill its quota. Every edit adds an entry and a removal frees none (the
    log is the tenant's history, nothing is dropped from it), so a tenant adding and removing one sentence over and
    over, within its quotas of points, grew its log, and the log of every edit, until the disk that every tenant's
    edits need was full. The places held count too, so that edits sent at once stop at the quota, not past it by
    their number (in one process: replicas on a server see each other's entries once written)."""
    limit = quota.audit_entries if quota is not None else None
    if limit is None or tenant is None or tenant == S.GLOBAL_TENANT:  # the global layer has no quota
        yield
        return
    key = (store.describe(), tenant)
    held = store.documents().log_length(tenant_audit(tenant))  # read outside the lock: a first count takes a while
    with _counts_lock:
        # An edit whose entry is written but whose place is not yet given back counts twice for that moment: an
        # edit at the very edge may then be refused, never one past it let in.
        under_way = _audit_places.get(key, 0)
        if held + under_way >= limit:
            under = f" and {under_way:,} edits under way" if under_way else ""
            raise QuotaExceededError(
                f"tenant {tenant!r}'s audit log holds {held:,} entries{under} and may hold {limit:,} (the "
                "service's --tenant-max-audit-entries): no more edits are taken; ask the operator to raise the "
                "quota (nothing is dropped from a tenant's history of edits)")
        _audit_places[key] = under_way + 1
    try:
        yield
    finally:
        with _counts_lock:
            left = _audit_places.pop(key) - 1
            if left:
                _audit_places[key] = left


@contextmanager
def room_for(store: Store, quota: Quota | None, owner: str, collection: str, adding: int) -> Iterator[None]:
    """Hold the tenant's quota lock for `collection` across the write of `adding` new points, once they fit;
    QuotaExceededError, with nothing written, when they do not."""
    limit = quota.limit(collection) if quota is not None and owner != S.GLOBAL_TENANT else None
    if limit is None or adding <= 0:
        yield
        return
    key = (store.describe(), owner, collection)
    with store.item_lock("quota", owner, collection):
        held = points_of(store, owner, collection)
        if held + adding > limit:
            what, flag, way_out = _WHAT[collection]
            raise QuotaExceededError(
                f"tenant {owner!r} holds {held:,} {what} of its own and may hold {limit:,} (the service's {flag}): "
                f"{adding:,} more do not fit; {way_out}")
        yield
        _adjust(key, adding)


def points_of(store: Store, owner: str, collection: str) -> int:
    """The points of `owner`'s own layer in `collection`, counted at most once a second (the count quotas keep):
    what `/v1/status` shows, which a key could otherwise have counted, holding Python's lock, as often as it asked."""
    key = (store.describe(), owner, collection)
    held = _recent(key)
    if held is None:
        held = store.count(collection, where={S.F_TENANT: owner})
        with _counts_lock:
            _counts[key] = (held, time.monotonic())
    return held


def released(store: Store, owner: str, collection: str, removed: int) -> None:
    """This process removed `removed` of the tenant's own points: room again at once, not after the next count."""
    _adjust((store.describe(), owner, collection), -removed)


def forget(store: Store, owner: str) -> None:
    """The tenant was deleted: its next add counts afresh."""
    with _counts_lock:
        for key in [k for k in _counts if k[:2] == (store.describe(), owner)]:
            del _counts[key]


_RECOUNT_S = 1.0
_counts: dict[tuple[str, str, str], tuple[int, float]] = {}  # (store, tenant, collection) -> (points, counted at)
_audit_places: dict[tuple[str, str], int] = {}  # (store, tenant) -> edits under way that hold a place in its log
_counts_lock = threading.Lock()


def _recent(key: tuple[str, str, str]) -> int | None:
    with _counts_lock:
        held, at = _counts.get(key, (0, -_RECOUNT_S))
    return held if time.monotonic() - at < _RECOUNT_S else None


def _adjust(key: tuple[str, str, str], by: int) -> None:
    with _counts_lock:
        if key in _counts:
            held, at = _counts[key]
            _counts[key] = (max(held + by, 0), at)
