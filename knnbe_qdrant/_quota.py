"""Quotas: how many points of its own a tenant may hold, so that one tenant cannot fill the store every other tenant
maps against (its disk and memory, and the memory query all tenants share). The service sets them (`serve
--tenant-max-skills`, `--tenant-max-sentences`); the library and the command line have none unless given one
(`Curator.quota`). The global layer has none.

Counted, not tracked: an add counts the tenant's points in the store while it holds the tenant's quota lock (an item
lock, so across replicas on a server too). Concurrent adds never take a tenant past its quota, and the count is
right whatever else wrote or deleted points (another process, the tenant's deletion, an import).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import _schema as S
from ._errors import InvalidInputError, QuotaExceededError
from .store.base import Store

_WHAT = {S.SKILLS: ("skills", "--tenant-max-skills"), S.MEMORY: ("memory sentences", "--tenant-max-sentences")}


@dataclass(frozen=True)
class Quota:
    """At most `skills` skills and `sentences` memory sentences of its own per tenant; None: no limit."""

    skills: int | None = None
    sentences: int | None = None

    def __post_init__(self) -> None:
        for name in ("skills", "sentences"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidInputError(f"quota {name}: {value!r}; a whole number >= 1, or None for no limit")

    def limit(self, collection: str) -> int | None:
        return self.skills if collection == S.SKILLS else self.sentences


DEFAULT_QUOTA = Quota(skills=10_000, sentences=100_000)
"""The service's default: about as many sentences as the shipped memory's ESCO layer has (129,831), a tenant's
own taxonomy of 10,000 skills. `serve --tenant-max-skills 0 --tenant-max-sentences 0` lifts them."""


@contextmanager
def room_for(store: Store, quota: Quota | None, owner: str, collection: str, adding: int) -> Iterator[None]:
    """Hold the tenant's quota lock for `collection` across the write of `adding` new points, once they fit;
    QuotaExceededError, with nothing written, when they do not."""
    limit = quota.limit(collection) if quota is not None and owner != S.GLOBAL_TENANT else None
    if limit is None or adding <= 0:
        yield
        return
    with store.item_lock("quota", owner, collection):
        held = store.count(collection, where={S.F_TENANT: owner})
        if held + adding > limit:
            what, flag = _WHAT[collection]
            raise QuotaExceededError(
                f"tenant {owner!r} holds {held:,} {what} of its own and may hold {limit:,} (the service's {flag}): "
                f"{adding:,} more do not fit; remove some first, or ask the operator to raise the quota")
        yield
