"""Ordered, versioned migrations of a store's collections (the registry). The model change, which re-encodes
everything, is `migrations.reembed`.

Every migration is idempotent and records itself in the store's manifest (on a server: the `<prefix>meta`
collection, i.e. in Qdrant itself) once done, so `knnbe-qdrant migrate` applies exactly what is pending and can be
re-run after a crash half-way. A store built by this version starts with every migration applied. Which migrations
exist, and in what order, is `_schema.SCHEMA_HISTORY`; this module says how each one is done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import _schema as S
from ..store.base import Store


@dataclass(frozen=True)
class Migration:
    id: str
    description: str
    apply: Callable[[Store], None]

    @property
    def version(self) -> int:
        return int(self.id.split("_", 1)[0])


def _collections_and_indexes(store: Store) -> None:
    store._create_collections(store.manifest.dimension)  # creates only what is missing; indexes are idempotent


def _skill_status(store: Store) -> None:
    """Give every skill an explicit `status` ("active" unless retired), so filters need not rely on absence."""
    store._create_collections(store.manifest.dimension)  # makes sure the `status` keyword index exists
    missing = [r.id for r in store.scroll(S.SKILLS, payload=[S.F_STATUS]) if S.F_STATUS not in r.payload]
    for start in range(0, len(missing), 1000):
        store.set_payload(S.SKILLS, missing[start : start + 1000], {S.F_STATUS: S.ACTIVE})


def _hide_marks(store: Store) -> None:
    """Turn each `hidden_for` list into one hide key per tenant. The keys are written before the list goes, so a
    crash half-way leaves both (the same marks twice), and the re-run finishes it."""
    store._create_collections(store.manifest.dimension)  # the meta collection's `kind` index, on a server
    listed: dict[str, list[str]] = {}  # collection -> ids of its points with a list
    marked: dict[tuple[str, str], list[str]] = {}  # (collection, tenant) -> ids
    for collection in S.COLLECTIONS:
        for record in store.scroll(collection, payload=[S.F_HIDDEN_FOR]):
            hidden = record.payload.get(S.F_HIDDEN_FOR)
            if hidden is None:
                continue
            listed.setdefault(collection, []).append(record.id)
            for tenant in hidden if isinstance(hidden, list) else [hidden]:
                marked.setdefault((collection, tenant), []).append(record.id)
    for tenant in sorted({t for _, t in marked}):
        store.register_hider(tenant)
    for (collection, tenant), points in marked.items():
        for start in range(0, len(points), 1000):
            store.set_payload(collection, points[start : start + 1000], {S.hide_key(tenant): tenant})
    for collection, ids in listed.items():
        for start in range(0, len(ids), 1000):
            store.delete_payload(collection, ids[start : start + 1000], [S.F_HIDDEN_FOR])


_STEPS: dict[str, Callable[[Store], None]] = {
    "0001_collections": _collections_and_indexes,
    "0002_skill_status": _skill_status,
    "0003_hide_marks": _hide_marks,
}
MIGRATIONS: list[Migration] = [Migration(mid, description, _STEPS[mid]) for mid, description in S.SCHEMA_HISTORY]


def pending(store: Store) -> list[Migration]:
    done = {m["id"] for m in store.manifest.migrations}
    return [m for m in MIGRATIONS if m.id not in done]


def migrate(store: Store, *, dry_run: bool = False) -> list[str]:
    """Apply the pending migrations in order; returns their descriptions (with dry_run, only lists them)."""
    todo = pending(store)
    if not dry_run:
        for migration in todo:
            migration.apply(store)
            manifest = store.manifest
            store.update_manifest(
                migrations=[*manifest.migrations, {"id": migration.id, "applied_at": S.utc_now()}],
                schema_version=max(manifest.schema_version, migration.version),
            )
        if todo:
            store.optimize()  # payload edits on every point leave segments to merge and re-index
    return [f"{m.id}: {m.description}" for m in todo]
