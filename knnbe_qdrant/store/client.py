"""qdrant-client backend: a Qdrant server (the production path) or qdrant-client's local mode (small data, tests).

Collections are named with a prefix so the plugin never touches a team's other collections: <prefix>skills,
<prefix>memory, and <prefix>meta, a vectorless collection holding the manifest."""

from __future__ import annotations

import contextlib
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
from qdrant_client import QdrantClient, models

from .._errors import ServerError, StoreCorruptError, StoreError
from .._schema import COLLECTIONS, DEFAULT_PREFIX, TENANT_INDEX, Manifest
from .base import MANIFEST_RECOVERY, Hit, Record, Store, WhereLike
from .fences import ALL, Held, lease_alone, lease_edit, lease_tenant_deletion
from .locks import LOCK_WAIT_S, lease
from .meta_documents import MetaDocuments
from .retry import RetryPolicy, call_with_retries, describe_fault
from .translate import build_filter, payload_selector, to_record

META = "meta"
_MANIFEST_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "knnbe-qdrant/manifest"))
_NEXT_MANIFEST_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "knnbe-qdrant/manifest/next"))  # a rebuild in progress
_UPSERT_CHUNK = 256
DEFAULT_DEADLINE_S = 60.0
"""The whole-call deadline (retries included) when no timeout is configured (`--timeout`, `QDRANT_TIMEOUT`)."""
T = TypeVar("T")


class QdrantClientStore(Store):
    def __init__(self, client: QdrantClient, *, prefix: str = DEFAULT_PREFIX, retry: RetryPolicy | None = None,
                 url: str | None = None, deadline: float | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.url = url or "?"
        self.deadline = deadline  # seconds a whole call may take, retries included (the configured timeout)
        self._local = client._client.__class__.__name__ == "QdrantLocal"  # local mode: the pure-Python engine
        self.backend = "qdrant-local" if self._local else "qdrant"
        # Local mode's arrays are not safe to search while another thread grows them: serialise it. A server needs
        # nothing of the kind (each call is a request).
        self._guard = threading.RLock() if self._local else contextlib.nullcontext()
        self.retry = retry or RetryPolicy.from_env()
        self._view_generation: int | None = None
        self._manifest_id = _MANIFEST_ID
        self._meta_indexed = False

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One client call: serialised in local mode; against a server, retried on transient faults, within the
        configured timeout as a total deadline (not per read: a server that drips bytes cannot hold a call), and
        any failure turned into one ServerError line."""
        with self._guard:
            if self._local:
                return fn(*args, **kwargs)
            try:
                return call_with_retries(self.retry, fn, *args, deadline=self.deadline, **kwargs)
            except Exception as exc:
                raise ServerError(describe_fault(self.url, exc, self.deadline)) from exc

    @classmethod
    def connect(
        cls, url: str | None = None, *, api_key: str | None = None, path: str | None = None,
        prefix: str = DEFAULT_PREFIX, timeout: int | None = None, prefer_grpc: bool = False,
        retry: RetryPolicy | None = None, check_compatibility: bool = True,
    ) -> QdrantClientStore:
        """`url` for a server; `path` (a directory, or ":memory:") for qdrant-client's local mode."""
        if path is not None:
            client = QdrantClient(location=":memory:") if path == ":memory:" else QdrantClient(path=path)
        else:
            client = QdrantClient(
                url=url, api_key=api_key, timeout=timeout, prefer_grpc=prefer_grpc,
                check_compatibility=check_compatibility,
            )
        # No timeout configured still means a deadline: a server that drips bytes must not hold a call for minutes.
        return cls(client, prefix=prefix, retry=retry, url=url,
                   deadline=float(timeout) if timeout else DEFAULT_DEADLINE_S)

    def describe(self) -> str:
        where = "qdrant-client local mode" if self._local else "the Qdrant server"
        return f"{where} (collections {self.prefix}*)"

    def name(self, collection: str) -> str:
        """The alias every call uses (or, in a migration's view of another generation, that physical collection)."""
        if collection in COLLECTIONS and self._view_generation is not None:
            return self.physical(collection, self._view_generation)
        return f"{self.prefix}{collection}"

    def physical(self, collection: str, generation: int) -> str:
        return f"{self.prefix}{collection}_g{generation}"

    def collection_name(self, collection: str) -> str:
        return f"{self.name(collection)} -> {self.physical(collection, self.generation)}"

    @property
    def generation(self) -> int:
        if self._view_generation is not None:
            return self._view_generation
        manifest = self._read_manifest()
        return manifest.generation if manifest else 1

    # ---- manifest -----------------------------------------------------------------------------------------------
    def _read_manifest(self) -> Manifest | None:
        if not self._call(self.client.collection_exists, self.name(META)):
            return None
        records = self._call(self.client.retrieve, self.name(META), [self._manifest_id], with_payload=True)
        if not records:
            return None
        try:
            return Manifest.from_dict(records[0].payload or {})
        except ValueError as exc:
            raise StoreCorruptError(f"the manifest in {self.name(META)} is damaged: {exc}; {MANIFEST_RECOVERY}"
                                    ) from exc

    def meta_collection(self) -> str:
        """The meta collection's name, created where missing."""
        self._ensure_meta()
        return self.name(META)

    def _ensure_meta(self) -> None:
        if not self._call(self.client.collection_exists, self.name(META)):
            self._call(self.client.create_collection, self.name(META), vectors_config={})
            self._meta_indexed = False
        if not self._meta_indexed:  # once per store object: a store made before an index existed gets it
            with contextlib.suppress(ServerError):  # a read-only key cannot make one: reads work without it
                self._meta_indexes()
            self._meta_indexed = True

    def _meta_indexes(self) -> None:
        """Documents are read by kind; an audit log's tail by its clock (`written_ns`), newest first."""
        self._keyword_index(self.name(META), "kind")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # local mode warns that it has no payload indexes
            self._call(self.client.create_payload_index, self.name(META), "written_ns",
                       field_schema=models.PayloadSchemaType.INTEGER, wait=True)

    def _write_manifest(self, manifest: Manifest) -> None:
        self._ensure_meta()
        point = models.PointStruct(id=self._manifest_id, vector={}, payload=manifest.__dict__.copy())
        self._call(self.client.upsert, self.name(META), points=[point], wait=True)

    def _create_collections(self, dimension: int) -> None:
        """Physical collections <prefix><name>_g<generation> with their indexes, reached through the aliases
        <prefix><name> (created where missing)."""
        generation = self.generation
        for collection in COLLECTIONS:
            name = self.physical(collection, generation)
            if not self._call(self.client.collection_exists, name):
                self._call(
                    self.client.create_collection,
                    name,
                    vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE),
                )
            for field in self.index_fields(collection):
                self._keyword_index(name, field)
            if self._view_generation is None and not self._alias_target(collection):
                self._call(
                    self.client.update_collection_aliases,
                    change_aliases_operations=[self._create_alias(collection, generation)],
                )

    # ---- data ---------------------------------------------------------------------------------------------------

    def upsert(
        self, collection: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        for start in range(0, len(ids), _UPSERT_CHUNK):
            end = start + _UPSERT_CHUNK
            self._call(
                self.client.upsert,
                self.name(collection),
                points=models.Batch(
                    ids=list(ids[start:end]),
                    vectors=np.asarray(vectors[start:end], dtype=np.float32).tolist(),
                    payloads=list(payloads[start:end]),
                ),
                wait=True,
            )

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        self._call(
            self.client.delete, self.name(collection), points_selector=models.PointIdsList(points=list(ids)), wait=True
        )

    def retrieve(
        self, collection: str, ids: Sequence[str], *, with_vectors: bool = False, payload: bool | Sequence[str] = True
    ) -> list[Record]:
        if not ids:
            return []
        records = self._call(self.client.retrieve, self.name(collection), list(ids),
                             with_payload=payload_selector(payload), with_vectors=with_vectors)
        return [to_record(r, with_vectors) for r in records]

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
        if len(vectors) == 0:
            return []
        flt = build_filter(where, models)
        params = models.SearchParams(exact=exact, hnsw_ef=hnsw_ef)
        requests = [
            models.QueryRequest(
                query=v.tolist(), limit=limit, filter=flt, with_payload=payload_selector(payload), params=params
            )
            for v in vectors
        ]
        with warnings.catch_warnings():
            if self._local:  # local mode always searches exactly and says so on every call
                warnings.simplefilter("ignore")
            responses = self._call(self.client.query_batch_points, self.name(collection), requests=requests)
        return [[Hit(p.id, p.score, p.payload or {}) for p in r.points] for r in responses]

    def scroll(
        self,
        collection: str,
        *,
        where: WhereLike | None = None,
        payload: bool | Sequence[str] = True,
        batch: int = 1000, start: str | None = None,
    ) -> Iterator[Record]:
        offset: Any = start
        while True:
            records, offset = self._call(
                self.client.scroll,
                self.name(collection),
                scroll_filter=build_filter(where, models),
                limit=batch,
                offset=offset,
                with_payload=payload_selector(payload),
                with_vectors=False,
            )
            for r in records:
                yield to_record(r, with_vectors=False)
            if offset is None:
                return

    def scroll_page(self, collection: str, *, offset: str | None, limit: int) -> list[Record]:
        records, _ = self._call(self.client.scroll, self.name(collection), limit=limit, offset=offset,
                                with_payload=True, with_vectors=False)
        return [to_record(r, with_vectors=False) for r in records]

    def count(self, collection: str, *, where: WhereLike | None = None) -> int:
        flt = build_filter(where, models)
        return int(self._call(self.client.count, self.name(collection), count_filter=flt, exact=True).count)

    def set_payload(self, collection: str, ids: Sequence[str], payload: dict[str, Any]) -> None:
        if ids:
            self._call(self.client.set_payload, self.name(collection), payload=payload,
                       points=models.PointIdsList(points=list(ids)), wait=True)

    def update_vectors(self, collection: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        if ids:
            points = [models.PointVectors(id=pid, vector=np.asarray(v, dtype=np.float32).tolist())
                      for pid, v in zip(ids, vectors)]
            self._call(self.client.update_vectors, self.name(collection), points=points, wait=True)

    def create_keyword_index(self, collection: str, field: str) -> None:
        self._keyword_index(self.physical(collection, self.generation), field)

    def _keyword_index(self, name: str, field: str) -> None:
        schema = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=field == TENANT_INDEX)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # local mode warns that it has no payload indexes
            self._call(self.client.create_payload_index, name, field, field_schema=schema, wait=True)

    def delete_payload(self, collection: str, ids: Sequence[str], keys: Sequence[str]) -> None:
        if ids and keys:
            self._call(self.client.delete_payload, self.name(collection), keys=list(keys),
                       points=models.PointIdsList(points=list(ids)), wait=True)

    def delete_where(self, collection: str, where: WhereLike) -> None:
        self._call(self.client.delete, self.name(collection),
                   points_selector=models.FilterSelector(filter=build_filter(where, models)), wait=True)

    def distinct(self, collection: str, field: str, *, where: WhereLike | None = None) -> dict[str, int]:
        response = self._call(self.client.facet, self.name(collection), key=field,
                              facet_filter=build_filter(where, models), limit=1_000_000, exact=True)
        return {str(hit.value): hit.count for hit in response.hits if hit.count > 0}

    def _serves(self, generation: int) -> bool:
        return all(self._alias_target(c) == self.physical(c, generation) for c in COLLECTIONS)

    def _alias_target(self, collection: str) -> str | None:
        alias = f"{self.prefix}{collection}"
        for a in self._call(self.client.get_aliases).aliases:
            if a.alias_name == alias:
                return a.collection_name
        return None

    def _create_alias(self, collection: str, generation: int) -> models.CreateAliasOperation:
        return models.CreateAliasOperation(
            create_alias=models.CreateAlias(
                collection_name=self.physical(collection, generation), alias_name=f"{self.prefix}{collection}"
            )
        )

    def at_generation(self, generation: int) -> QdrantClientStore:
        view = QdrantClientStore(self.client, prefix=self.prefix, retry=self.retry)
        view._guard = self._guard
        view._view_generation = generation
        return view

    def rebuild_view(self) -> QdrantClientStore:
        current = self.manifest
        view = self.at_generation(0)
        view._manifest_id = _NEXT_MANIFEST_ID
        pending = view._read_manifest()
        taken = [current.generation, (current.previous or {}).get("generation", 0)]
        generation = pending.generation if pending else max(taken) + 1
        if not pending:  # a stopped rebuild of another generation, or none: start on clean collections
            self._drop_physical(generation)
        view._view_generation = generation
        return view

    def promote(self, view: Store) -> None:
        if not isinstance(view, QdrantClientStore) or view._manifest_id != _NEXT_MANIFEST_ID:
            raise StoreError("promote() takes the view that rebuild_view() gave")
        new = view.manifest
        old = self.manifest
        # Aliases first, in one call; then the manifest. A crash between the two is seen by check_ready (the
        # aliases no longer name the manifest's generation) and repaired by running the rebuild again.
        self._switch_aliases(new.generation)
        self._write_manifest(new)
        self._call(self.client.delete, self.name(META), points_selector=models.PointIdsList(points=[_NEXT_MANIFEST_ID]),
                   wait=True)
        replaced = {old.generation, int((old.previous or {}).get("generation") or old.generation)}
        for generation in replaced - {new.generation}:
            self._drop_physical(generation)

    def _drop_physical(self, generation: int) -> None:
        for collection in COLLECTIONS:
            if self._call(self.client.collection_exists, self.physical(collection, generation)):
                self._call(self.client.delete_collection, self.physical(collection, generation))

    def _switch_aliases(self, generation: int) -> None:
        operations: list[Any] = []
        for collection in COLLECTIONS:
            if self._alias_target(collection):
                alias = f"{self.prefix}{collection}"
                operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
            operations.append(self._create_alias(collection, generation))
        self._call(self.client.update_collection_aliases, change_aliases_operations=operations)

    def swap_to(self, generation: int, **manifest_updates: Any) -> None:
        # One update_collection_aliases call re-points every alias at once: readers see the old generation or the
        # new one, never a mix. The manifest follows; a crash in between is repaired by re-running the migration.
        self._switch_aliases(generation)
        self.update_manifest(**manifest_updates, generation=generation)

    def drop_generation(self, generation: int) -> None:
        if generation == self.generation:
            raise StoreCorruptError("refusing to drop the generation that serves")
        for collection in COLLECTIONS:
            self._call(self.client.delete_collection, self.physical(collection, generation))

    def drop(self) -> None:
        """The collections and the manifest go; the service's documents in the meta collection (API keys, audit
        log) stay: they belong to the deployment, not to one build of the data."""
        mine = [f"{self.prefix}{c}_g" for c in COLLECTIONS]
        for collection in self._call(self.client.get_collections).collections:
            if any(collection.name.startswith(m) and collection.name[len(m):].isdigit() for m in mine):
                self._call(self.client.delete_collection, collection.name)
        if self._call(self.client.collection_exists, self.name(META)):
            self._call(self.client.delete, self.name(META), points_selector=models.PointIdsList(points=[_MANIFEST_ID]),
                       wait=True)

    # ---- the service's documents (keys, audit) in the meta collection ---------------------------------------
    def documents(self) -> MetaDocuments:
        return MetaDocuments(self)

    def item_lock(self, *key: str) -> contextlib.AbstractContextManager[None]:
        return super().item_lock(*key) if self._local else lease(self, tuple(key))  # local mode: one process

    def edit_fence(self, tenant: str | None, wait: float = LOCK_WAIT_S) -> contextlib.AbstractContextManager[int]:
        return super().edit_fence(tenant, wait) if self._local else lease_edit(self, tenant, wait)

    def tenant_deletion(self, tenant: str) -> contextlib.AbstractContextManager[Held]:
        return super().tenant_deletion(tenant) if self._local else lease_tenant_deletion(self, tenant)

    def edits_paused(self) -> contextlib.AbstractContextManager[Held]:
        return super().edits_paused() if self._local else lease_alone(self, ALL)

    def meta_exists(self) -> bool:
        return bool(self._call(self.client.collection_exists, self.name(META)))

    def close(self) -> None:
        if self._view_generation is None:  # a migration's view shares the client of the store it came from
            self.client.close()
