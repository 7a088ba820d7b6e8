"""When the embedded store's new points are worth indexing. Qdrant Edge indexes only when told (`Store.optimize`):
a build, a migration, a restore, a `memory import` and `knnbe-qdrant index` tell it. Points curators add after that
wait in a segment that every query of the layers holding them scans point by point: with 100,000 of them, a tenant's
one-sentence maps took 2.5x as long (docs/performance.md, 2026-12-07). A server indexes in the background by itself.
"""

from __future__ import annotations

from .base import Store

INDEXING_THRESHOLD_KB = 10_000
"""Qdrant's default `indexing_threshold_kb`, which Edge applies too: it indexes a segment once its vectors pass it
(about 6,500 of 384 dimensions), and leaves smaller ones to be scanned, which costs nothing at that size."""


def due_for_index(store: Store) -> int:
    """How many points no index covers, when they are enough for the engine to index them; else 0."""
    waiting = store.unindexed() or 0
    return waiting if waiting * store.manifest.dimension * 4 >= INDEXING_THRESHOLD_KB * 1024 else 0
