"""The small interface every backend implements, and the lifecycle logic they share."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import ModelMismatchError, StoreCorruptError, StoreNotFoundError
from .._schema import COLLECTIONS, HIDERS, KEYWORD_INDEXES, SCHEMA_VERSION, Manifest, hide_key, utc_now
from .documents import Documents
from .fences import ALL, Held, process_alone, process_edit, process_tenant_deletion
from .locks import LOCK_WAIT_S, process_lock

Value = str | bool | Sequence[str]

RECOVERY = ("restore it with `knnbe-qdrant restore BACKUP_DIR` (a backup made with `knnbe-qdrant backup`), or run "
            "`knnbe-qdrant build --force`, which rebuilds it and carries over every curated skill, sentence and hide "
            "mark it can still read")
"""The way out of a damaged store that keeps the curated data; every 'damaged' message ends with it."""
MANIFEST_RECOVERY = ("restore a backup into a new location (`knnbe-qdrant --store NEW_DIR restore BACKUP_DIR`, or "
                     "`--prefix NEW_` on a server), or rebuild there with `knnbe-qdrant build`")


@dataclass(frozen=True)
class Where:
    """A filter: every `must` field holds the value (or one of the values); no `must_not` field does. A plain
    mapping stands for `Where(must=mapping)`."""

    must: Mapping[str, Value] = field(default_factory=dict)
    must_not: Mapping[str, Value] = field(default_factory=dict)


class Hit:
    """One search result. Mapping reads thousands per batch, so this stays a slotted object whose `id` is turned
    into a string only when someone asks for it."""

    __slots__ = ("_id", "payload", "score")

    def __init__(self, id: Any, score: float, payload: dict[str, Any]) -> None:
        self._id = id
        self.score = score
        self.payload = payload

    @property
    def id(self) -> str:
        return str(self.key)

    @property
    def key(self) -> Any:
        """The point id as the backend gives it (a UUID, or a string): hashable, cheaper than `id`'s string."""
        raw = self._id
        return getattr(raw, "id", raw)  # a backend may hand over its native point and let us read the id late

    def __repr__(self) -> str:
        return f"Hit(id={self.id!r}, score={self.score!r}, payload={self.payload!r})"


def point_key(raw: Any) -> int:
    """A UUID point id (a uuid.UUID, or its string) as its 128-bit integer: hashable, never tracked by the garbage
    collector, and turned back into the id by `key_id`. Qdrant's ids are UUIDs or unsigned integers, and every
    point this package writes has a UUID one; an integer id (a point written by another hand) is kept as it is, and
    no retrieve by `key_id` finds it."""
    if isinstance(raw, uuid.UUID):
        return raw.int
    return raw if isinstance(raw, int) else uuid.UUID(str(raw)).int


def key_id(key: int) -> str:
    return str(uuid.UUID(int=key))


WhereLike = Where | Mapping[str, Value]
"""What every read takes as a filter: a Where, or a plain mapping of fields that must hold."""


@dataclass(frozen=True)
class Record:
    id: str
    payload: dict[str, Any]
    vector: np.ndarray | None = None


def vectors_of(records: Sequence[Record]) -> np.ndarray:
    """The vectors of records retrieved with their vectors, one row each."""
    missing = [r.id for r in records if r.vector is None]
    if missing:
        raise StoreCorruptError(f"points {missing[:3]} came back without their vectors")
    return np.stack([r.vector for r in records if r.vector is not None])


class Store(ABC):
    """Two collections (skills, memory) plus a manifest, behind calls that batch by design.

    Every read takes an optional `where` filter; the mapper always passes the visible tenants, which the tenant
    payload index answers cheaply on both backends.
    """

    backend: str = "abstract"

    # ---- lifecycle shared by every backend -------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        manifest = self._read_manifest()
        if manifest is None:
            raise StoreNotFoundError(f"no store in {self.describe()}: run `knnbe-qdrant build` to create one")
        return manifest

    def exists(self) -> bool:
        return self._read_manifest() is not None

    def initialize(self, model: str, dimension: int, **manifest_fields: Any) -> Manifest:
        """Create the collections for `model`, or resume a store begun with the same model. Idempotent.

        `manifest_fields` go into a new store's manifest; the builder passes `migrations`, the list of migrations a
        store born at the latest schema counts as applied."""
        existing = self._read_manifest()
        if existing is not None:
            self.check_model(model, dimension, existing)
            resumed = self.update_manifest(state="building")
            self._create_collections(dimension)  # no-op where they exist: a crash may have come before them
            return resumed
        # A view on another generation (a rebuild, a re-embedding) records that generation as its own.
        manifest_fields.setdefault("generation", getattr(self, "generation", 1))
        manifest = Manifest(model=model, dimension=dimension, **manifest_fields)
        # Manifest first, marked "building": a crash from here on leaves a store that says it is unfinished.
        self._write_manifest(manifest)
        self._create_collections(dimension)
        return manifest

    def update_manifest(self, **updates: Any) -> Manifest:
        """Read the manifest, change these fields, stamp `updated_at`, write it back; returns it."""
        manifest = self.manifest
        for key, value in updates.items():
            setattr(manifest, key, value)
        manifest.updated_at = utc_now()
        self._write_manifest(manifest)
        return manifest

    def mark_ready(self, **updates: Any) -> Manifest:
        return self.update_manifest(**updates, state="ready")

    def check_model(self, model: str, dimension: int | None, manifest: Manifest | None = None) -> None:
        m = manifest or self.manifest
        if m.schema_version > SCHEMA_VERSION:
            raise StoreCorruptError(
                f"{self.describe()} has schema version {m.schema_version}, newer than this knnbe-qdrant "
                f"({SCHEMA_VERSION}): upgrade knnbe-qdrant"
            )
        if m.schema_version < SCHEMA_VERSION:
            raise StoreCorruptError(
                f"{self.describe()} has schema version {m.schema_version}; run `knnbe-qdrant migrate` to bring it "
                f"to {SCHEMA_VERSION}"
            )
        if m.model != model or (dimension is not None and m.dimension != dimension):
            raise ModelMismatchError(
                f"{self.describe()} was built with model {m.model!r} ({m.dimension}-d); refusing to use it with "
                f"{model!r}" + (f" ({dimension}-d)" if dimension is not None else "")
                + ". Open it with the same model, or build a new store for the other model."
            )

    def check_ready(self, *, verify: bool = True) -> Manifest:
        """The manifest of a store that can serve; else StoreCorruptError saying how to recover. With `verify`,
        also what the manifest promises is checked against the engine, cheaply (see `verify`)."""
        m = self.manifest
        if not self._serves(m.generation):
            if m.pending_reembed:
                raise StoreCorruptError(
                    f"{self.describe()}: a re-embedding to {m.pending_reembed.get('model')} stopped half-way; run "
                    f"`knnbe-qdrant migrate --model {m.pending_reembed.get('model')}` to finish it"
                )
            raise StoreCorruptError(
                f"{self.describe()}: the collections that serve are not those its manifest names: a rebuild stopped "
                "during its swap; run `knnbe-qdrant build --force` again to finish it"
            )
        if m.state != "ready":  # a build's, or a restore's into a new store
            way = ("restore --force BACKUP_DIR` again" if m.state == "restoring" else "build` again to finish it "
                   "(already stored points are kept and not re-encoded)")
            raise StoreCorruptError(f"{self.describe()} is half-built (state {m.state!r}): run `knnbe-qdrant {way}")
        if verify:
            self.verify(m)
        return m

    def verify(self, manifest: Manifest) -> None:
        """Refuse a store whose engine no longer holds what its manifest promises (store.integrity)."""
        from .integrity import verify

        verify(self, manifest)

    def damaged(self, what: str) -> StoreCorruptError:
        """The one error for a store found damaged, with the ways out that keep the curated data."""
        return StoreCorruptError(f"{self.describe()} is damaged: {what}; {RECOVERY}")

    def item_lock(self, *key: str) -> AbstractContextManager[None]:
        """Hold one item (`("skill", tenant, id)`, `("memory", text)`) against every other edit of it, for an edit
        made of several writes; ConflictError when another edit holds it too long (see store.locks). These defaults
        (and the fences') serve backends that one process at a time may open."""
        return process_lock(self.describe(), tuple(key))

    def edit_fence(self, tenant: str | None, wait: float = LOCK_WAIT_S) -> AbstractContextManager[int]:
        """Hold the fences of an edit of `tenant`'s layer (None: the global one), waiting `wait` s at most for one
        held alone (see store.fences); yields the tenant's epoch."""
        return process_edit(self.describe(), tenant, wait)

    def tenant_deletion(self, tenant: str) -> AbstractContextManager[Held]:  # every edit of the tenant waits
        return process_tenant_deletion(self.describe(), tenant)

    def edits_paused(self) -> AbstractContextManager[Held]:  # every edit waits: for a rebuild's carry and swap
        return process_alone(self.describe(), ALL)

    def _serves(self, generation: int) -> bool:
        """Whether `generation`'s collections answer queries (not so only after a crash in a swap of aliases)."""
        return True

    def collection_name(self, collection: str) -> str:
        """The name the engine knows the collection by."""
        return collection

    def status(self) -> dict[str, Any]:
        """What `knnbe-qdrant status` reports: backend, location, schema, model, state and point counts."""
        m = self.manifest
        return {
            "backend": self.backend,
            "location": self.describe(),
            "schema_version": m.schema_version,
            "model": m.model,
            "dimension": m.dimension,
            "state": m.state,
            "collections": {self.collection_name(c): self.count(c) for c in COLLECTIONS},
            "unindexed": self.unindexed(),  # None where the backend indexes by itself (a server)
            "generation": m.generation, "pending_reembed": m.pending_reembed,
            "migrations": [x["id"] for x in m.migrations],
            "built_at": m.created_at,
            "updated_at": m.updated_at,
        }

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- what each backend implements --------------------------------------------------------------------------
    @abstractmethod
    def describe(self) -> str:
        """Where this store lives, for messages."""

    @abstractmethod
    def _read_manifest(self) -> Manifest | None: ...

    @abstractmethod
    def _write_manifest(self, manifest: Manifest) -> None: ...

    @abstractmethod
    def _create_collections(self, dimension: int) -> None:
        """Create both collections and their payload indexes where missing."""

    @abstractmethod
    def upsert(
        self, collection: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        """Insert or replace points; returns once they are durable."""

    @abstractmethod
    def delete(self, collection: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def retrieve(
        self, collection: str, ids: Sequence[str], *, with_vectors: bool = False, payload: bool | Sequence[str] = True
    ) -> list[Record]:
        """The points among `ids` that exist, in no particular order."""

    @abstractmethod
    def query_batch(
        self,
        collection: str,
        vectors: np.ndarray,
        limit: int,
        *,
        where: WhereLike | None = None,
        payload: bool | Sequence[str] = True,
        exact: bool = False,
        hnsw_ef: int | None = None,
    ) -> list[list[Hit]]:
        """Nearest points to each vector, best first, in one round trip for the whole batch."""

    def query_keys_batch(
        self,
        collection: str,
        vectors: np.ndarray,
        limit: int,
        *,
        where: WhereLike | None = None,
        exact: bool = False,
        hnsw_ef: int | None = None,
    ) -> list[tuple[list[int], list[float]]]:
        """`query_batch` without payloads, as plain lists: per vector, the points' keys (`point_key`) and scores,
        best first. Mapping's kNN query returns 136 points per sentence; as objects, a batch's 35,000 of them kept
        the garbage collector's full passes busy longer than the scoring itself took."""
        hits = self.query_batch(collection, vectors, limit, where=where, payload=False, exact=exact, hnsw_ef=hnsw_ef)
        return [([point_key(h.key) for h in row], [h.score for h in row]) for row in hits]

    @abstractmethod
    def scroll(
        self,
        collection: str,
        *,
        where: WhereLike | None = None,
        payload: bool | Sequence[str] = True,
        batch: int = 1000, start: str | None = None,  # from the first point whose id is `start` or after
    ) -> Iterator[Record]: ...

    @abstractmethod
    def scroll_page(self, collection: str, *, offset: str | None, limit: int) -> list[Record]:
        """Up to `limit` points (ids and payloads) in id order, from the first whose id is `offset` or after."""

    @abstractmethod
    def count(self, collection: str, *, where: WhereLike | None = None) -> int: ...

    @abstractmethod
    def set_payload(self, collection: str, ids: Sequence[str], payload: dict[str, Any]) -> None:
        """Set these payload fields (others are kept) on the given points; returns once durable."""

    @abstractmethod
    def update_vectors(self, collection: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Replace the vectors of existing points, keeping their payloads; returns once durable."""

    @abstractmethod
    def create_keyword_index(self, collection: str, field: str) -> None:
        """A keyword payload index on `field`, unless it exists (idempotent)."""

    def index_fields(self, collection: str) -> list[str]:
        """The keyword fields a collection is indexed on: the schema's, and the hide key of every registered tenant
        with hide marks (so that collections made anew, by a re-embedding or a rebuild, index them too)."""
        hiders = self.documents().all(HIDERS)
        return [*KEYWORD_INDEXES[collection], *(hide_key(t) for t in sorted(hiders))]

    def register_hider(self, tenant: str) -> None:
        """Record that `tenant` may have hide marks, and index its hide key in every collection. Done before its first
        mark: a crash in between leaves a registration without marks, never a mark no reader looks for. Idempotent."""
        self.documents().put(HIDERS, tenant, {"since": utc_now()})
        for collection in COLLECTIONS:
            self.create_keyword_index(collection, hide_key(tenant))

    @abstractmethod
    def delete_payload(self, collection: str, ids: Sequence[str], keys: Sequence[str]) -> None:
        """Remove these payload keys (others are kept) from the given points; returns once durable."""

    @abstractmethod
    def delete_where(self, collection: str, where: WhereLike) -> None:
        """Delete every point matching `where`; returns once durable."""

    @abstractmethod
    def distinct(self, collection: str, field: str, *, where: WhereLike | None = None) -> dict[str, int]:
        """Each value of a keyword field and how many points hold it (a facet)."""

    @abstractmethod
    def documents(self) -> Documents:
        """The small JSON documents kept with this store (the service's API keys and audit log)."""

    def optimize(self) -> None:  # noqa: B027  (optional: only backends that index explicitly override it)
        """Build indexes after a bulk load, where the backend does this explicitly."""

    def unindexed(self) -> int | None:  # a server indexes in the background: only the embedded store says
        """Points no vector index covers yet, which every query searches one by one."""
        return None

    @abstractmethod
    def at_generation(self, generation: int) -> Store:
        """A view of this store that addresses the physical collections of another generation (migrations)."""

    @abstractmethod
    def rebuild_view(self) -> Store:
        """A store beside this one, on a new generation with a manifest of its own: `build --force` builds into it
        while this one serves, then `promote`s it. Calling it again after a crash resumes that rebuild."""

    @abstractmethod
    def promote(self, view: Store) -> None:
        """Make a finished rebuild view the store, atomically, and drop the generations it replaced."""

    @abstractmethod
    def swap_to(self, generation: int, **manifest_updates: Any) -> None:
        """Make `generation` the one that serves, atomically, and record it (and `manifest_updates`)."""

    @abstractmethod
    def drop_generation(self, generation: int) -> None:
        """Delete the physical collections of a generation that does not serve."""

    @abstractmethod
    def drop(self) -> None:
        """Delete this store's collections and manifest (nothing else); `initialize` may then start afresh."""

    @abstractmethod
    def close(self) -> None: ...
