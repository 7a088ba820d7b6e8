"""qdrant-client backend: a Qdrant server (the production path) or qdrant-client's local mode (small data, tests).

Collections are named with a prefix so the plugin never touches a team's other collections: <prefix>skills,
<prefix>memory, and <prefix>meta, a vectorless collection holding the manifest.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from .._config import DEFAULT_PREFIX
from .._schema import COLLECTIONS, KEYWORD_INDEXES, TENANT_INDEX, Manifest
from .base import Hit, Record, Store, Where, build_filter, payload_selector, to_record

META = "meta"
_MANIFEST_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "knnbe-qdrant/manifest"))
_UPSERT_CHUNK = 256






class QdrantClientStore(Store):
    def __init__(self, client: QdrantClient, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._local = client._client.__class__.__name__ == "QdrantLocal"  # local mode: the pure-Python engine
        self.backend = "qdrant-local" if self._local else "qdrant"
        # Local mode's arrays are not safe to search while another thread grows them: serialise it. A server needs
        # nothing of the kind (each call is a request).
        self._guard = threading.RLock() if self._local else contextlib.nullcontext()

    @classmethod
    def connect(
        cls,
        url: str | None = None,
        *,
        api_key: str | None = None,
        path: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        timeout: int | None = None,
        prefer_grpc: bool = False,
    ) -> QdrantClientStore:
        """`url` for a server; `path` (a directory, or ":memory:") for qdrant-client's local mode."""
        if path is not None:
            client = QdrantClient(location=":memory:") if path == ":memory:" else QdrantClient(path=path)
        else:
            client = QdrantClient(url=url, api_key=api_key, timeout=timeout, prefer_grpc=prefer_grpc)
        return cls(client, prefix=prefix)

    def describe(self) -> str:
        where = "qdrant-client local mode" if self._local else "the Qdrant server"
        return f"{where} (collections {self.prefix}*)"

    def name(self, collection: str) -> str:
        return f"{self.prefix}{collection}"

    # ---- manifest -----------------------------------------------------------------------------------------------
    def _read_manifest(self) -> Manifest | None:
        with self._guard:
            if not self.client.collection_exists(self.name(META)):
                return None
            records = self.client.retrieve(self.name(META), [_MANIFEST_ID], with_payload=True)
            return Manifest.from_dict(records[0].payload or {}) if records else None

    def _write_manifest(self, manifest: Manifest) -> None:
        with self._guard:
            if not self.client.collection_exists(self.name(META)):
                self.client.create_collection(self.name(META), vectors_config={})
            self.client.upsert(
                self.name(META),
                points=[models.PointStruct(id=_MANIFEST_ID, vector={}, payload=manifest.__dict__.copy())],
                wait=True,
            )

    def _create_collections(self, dimension: int) -> None:
        with self._guard:
            for collection in COLLECTIONS:
                name = self.name(collection)
                if not self.client.collection_exists(name):
                    self.client.create_collection(
                        name, vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE)
                    )
                schemas = [
                    (f, models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=f == TENANT_INDEX))
                    for f in KEYWORD_INDEXES[collection]
                ]
                for field, schema in schemas:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # local mode warns that it has no payload indexes
                        self.client.create_payload_index(name, field, field_schema=schema, wait=True)

    # ---- data ---------------------------------------------------------------------------------------------------
    def upsert(
        self, collection: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        with self._guard:
            for start in range(0, len(ids), _UPSERT_CHUNK):
                end = start + _UPSERT_CHUNK
                self.client.upsert(
                    self.name(collection),
                    points=models.Batch(
                        ids=list(ids[start:end]),
                        vectors=np.asarray(vectors[start:end], dtype=np.float32).tolist(),
                        payloads=list(payloads[start:end]),
                    ),
                    wait=True,
                )

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        with self._guard:
            self.client.delete(self.name(collection), points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def retrieve(
        self, collection: str, ids: Sequence[str], *, with_vectors: bool = False, payload: bool | Sequence[str] = True
    ) -> list[Record]:
        with self._guard:
            if not ids:
                return []
            records = self.client.retrieve(
                self.name(collection), list(ids), with_payload=payload_selector(payload), with_vectors=with_vectors
            )
            return [to_record(r, with_vectors) for r in records]

    def query_batch(
        self,
        collection: str,
        vectors: np.ndarray,
        limit: int,
        *,
        where: Where | None = None,
        payload: bool | Sequence[str] = True,
        exact: bool = False,
        hnsw_ef: int | None = None,
    ) -> list[list[Hit]]:
        with self._guard:
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
                responses = self.client.query_batch_points(self.name(collection), requests=requests)
            return [
                [Hit(p.id, p.score, p.payload or {}) for p in r.points]
                for r in responses
            ]

    def scroll(
        self, collection: str, *, where: Where | None = None, payload: bool | Sequence[str] = True, batch: int = 1000
    ) -> Iterator[Record]:
        offset = None
        while True:
            with self._guard:
                records, offset = self.client.scroll(
                    self.name(collection), scroll_filter=build_filter(where, models), limit=batch, offset=offset,
                    with_payload=payload_selector(payload), with_vectors=False,
                )
            for r in records:
                yield to_record(r, with_vectors=False)
            if offset is None:
                return

    def count(self, collection: str, *, where: Where | None = None) -> int:
        with self._guard:
            return int(self.client.count(self.name(collection), count_filter=build_filter(where, models), exact=True).count)

    def set_payload(self, collection: str, ids: Sequence[str], payload: dict[str, Any]) -> None:
        with self._guard:
            if ids:
                self.client.set_payload(
                    self.name(collection), payload=payload, points=models.PointIdsList(points=list(ids)), wait=True
                )

    def delete_where(self, collection: str, where: Where) -> None:
        with self._guard:
            self.client.delete(
                self.name(collection), points_selector=models.FilterSelector(filter=build_filter(where, models)), wait=True
            )

    def distinct(self, collection: str, field: str, *, where: Where | None = None) -> dict[str, int]:
        with self._guard:
            response = self.client.facet(
                self.name(collection), key=field, facet_filter=build_filter(where, models), limit=1_000_000, exact=True
            )
            return {hit.value: hit.count for hit in response.hits if hit.count > 0}  # Edge keeps emptied values

    def drop(self) -> None:
        with self._guard:
            for collection in (*COLLECTIONS, META):
                self.client.delete_collection(self.name(collection))

    def close(self) -> None:
        self.client.close()
