"""Embedded backend: Qdrant's own engine in-process (Qdrant Edge), one shard per collection, in one directory.

Layout: store.layout. Writes go through Edge's write-ahead log, so an acknowledged upsert survives a crash. Edge
holds an exclusive lock on each shard's WAL: one process at a time."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from .._errors import KnnbeError, StoreCorruptError, StoreError, StoreLockedError
from .._schema import COLLECTIONS, SKILLS, TENANT_INDEX, Manifest
from . import layout
from .base import MANIFEST_RECOVERY, Hit, Record, Store, WhereLike, point_key
from .document_files import is_document_file
from .documents import FileDocuments, fsync_dir
from .edge_errors import check_room, disk_full, engine_failure, first_line
from .layout import MANIFEST_FILE, NEXT_MANIFEST_FILE, generations_on_disk, prepare, read_next_generation
from .payloads import PayloadCache
from .translate import build_filter, payload_selector, to_record

_UPSERT_CHUNK = 1024


class EdgeStore(Store):
    backend = "embedded"

    def __init__(
        self, path: str | os.PathLike[str], *, create: bool = False, generation: int | None = None,
        manifest_file: str = MANIFEST_FILE,
    ) -> None:
        self.path = Path(path).expanduser()
        self._fixed_generation = generation  # a view on another generation's shards (migrations, rebuilds)
        self.manifest_path = self.path / manifest_file
        self._shards: dict[str, qe.EdgeShard] = {}
        # Skills only: mapping reads 32 skill payloads a sentence, and memory payloads, content-addressed, are kept
        # above the store (_lookups.MemoryPayloads); a second copy of 127,000 of them would only cost memory.
        self._payloads = {SKILLS: PayloadCache()}  # every write goes through _update
        self._lock = threading.RLock()  # one shard update at a time from this process's threads
        has_manifest = prepare(self.path, create=create, generation=generation)
        manifest = self._read_manifest() if has_manifest else None
        self.generation = generation or (manifest.generation if manifest else 1)
        for name in COLLECTIONS:
            if self._dir(name).exists():
                self._shards[name] = self._load_shard(name)
        if has_manifest and generation is None and not create and len(self._shards) != len(COLLECTIONS):
            self.close()
            raise StoreCorruptError(f"{self.path} is missing collections {sorted(set(COLLECTIONS) - set(self._shards))}"
                                    ": the build stopped early; run `knnbe-qdrant build` again to finish it")

    def describe(self) -> str:
        return f"the embedded store at {self.path}"

    def _dir(self, collection: str, generation: int | None = None) -> Path:
        return self.path / f"{collection}_g{generation or self.generation}"

    def collection_name(self, collection: str) -> str:
        return self._dir(collection).name

    def _load_shard(self, name: str) -> qe.EdgeShard:
        try:
            shard = qe.EdgeShard.load(str(self._dir(name)))
        except Exception as exc:  # Edge raises a bare Exception whose text says what failed
            if full := disk_full(exc, f"opening {self.describe()}"):
                self.close()
                raise StoreError(full) from exc
            text = str(exc)
            if "WouldBlock" in text or "lock" in text.lower():
                self.close()
                raise StoreLockedError(
                    f"{self.describe()} is open in another process; the embedded store allows one process at a time "
                    "(close the other one, or share a Qdrant server between processes)"
                ) from exc
            self.close()
            raise self.damaged(f"cannot load collection {name!r} ({first_line(exc)})") from exc
        layout.clear_unfinished_segments(self._dir(name))  # the shard's lock, now held, keeps other processes out
        return shard

    # ---- manifest -----------------------------------------------------------------------------------------------
    def _read_manifest(self) -> Manifest | None:
        file = self.manifest_path
        if not file.exists():
            return None
        try:
            return Manifest.from_dict(json.loads(file.read_text(encoding="utf-8")))
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise StoreCorruptError(f"{file} is damaged: {exc}; {MANIFEST_RECOVERY}") from exc

    def _write_manifest(self, manifest: Manifest) -> None:
        # Write-then-rename, with fsyncs: readers see the old manifest or the new one, never half of one.
        file = self.manifest_path
        tmp = file.with_name(file.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(manifest.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
        fsync_dir(self.path)

    def _create_collections(self, dimension: int) -> None:
        with self._lock:
            for name in COLLECTIONS:
                if name in self._shards:
                    self._create_indexes(name)  # a store from an older schema may lack some
                    continue
                layout.create_whole(self._dir(name), qe.EdgeShard.create, layout.collection_config(dimension))
                self._shards[name] = self._load_shard(name)
                if name in self._payloads:
                    self._payloads[name].clear()
                self._create_indexes(name)

    def _create_indexes(self, name: str) -> None:
        for field in self.index_fields(name):
            self.create_keyword_index(name, field)

    @contextmanager
    def _reading(self, collection: str) -> Iterator[None]:
        """Edge raises a bare Exception when a file it reads is damaged (a payload page that does not decompress,
        say): that is the store's damage, said once with the way out, not a traceback."""
        try:
            yield
        except KnnbeError:
            raise
        except Exception as exc:
            raise self.damaged(f"reading {collection!r} failed ({first_line(exc)})") from exc

    def _shard(self, collection: str) -> qe.EdgeShard:
        if (shard := self._shards.get(collection)) is None:
            raise StoreCorruptError(f"{self.describe()} has no collection {collection!r}")
        return shard

    # ---- data ---------------------------------------------------------------------------------------------------
    def upsert(
        self, collection: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        with self._lock:
            check_room(self.path)
            for start in range(0, len(ids), _UPSERT_CHUNK):
                end = start + _UPSERT_CHUNK
                points = [qe.Point(id=pid, vector=vec, payload=pl)
                          for pid, vec, pl in zip(ids[start:end], vectors[start:end], payloads[start:end])]
                self._update(collection, qe.UpdateOperation.upsert_points(points), ids[start:end])

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        with self._lock:
            self._update(collection, qe.UpdateOperation.delete_points(list(ids)), ids)

    def _update(self, collection: str, operation: Any, ids: Sequence[Any] | None) -> None:
        """Every write to a shard, inside the payload cache's `writing` for the points it touches (`ids`; None:
        any), so that no read served from the cache is older than the shard."""
        shard = self._shard(collection)
        cache = self._payloads.get(collection)
        keys = None if ids is None or cache is None else [point_key(i) for i in ids]
        with cache.writing(keys) if cache is not None else nullcontext():
            try:
                shard.update(operation)
            except Exception as exc:  # Edge raises a bare Exception: a full disk, say, which stops its log
                raise StoreError(engine_failure(exc, f"writing to {collection!r} of {self.describe()}")) from exc

    def retrieve(
        self, collection: str, ids: Sequence[str], *, with_vectors: bool = False, payload: bool | Sequence[str] = True
    ) -> list[Record]:
        if not ids:
            return []
        if isinstance(payload, bool) or with_vectors or collection not in self._payloads:
            return self._retrieve(collection, ids, with_vectors, payload)
        found = self._payloads[collection].read([(pid, point_key(pid)) for pid in ids], tuple(payload),
                                                lambda missing: self._retrieve(collection, missing, False, payload))
        return [Record(id=str(pid), payload=p) for pid, p in found.items()]

    def _retrieve(self, collection: str, ids: Sequence[str], with_vectors: bool,
                  payload: bool | Sequence[str]) -> list[Record]:
        # Callers pass ids: retrieve returns early for none, and the payload cache fetches only what it lacks.
        with self._reading(collection):
            records = self._shard(collection).retrieve(
                list(ids), with_payload=payload_selector(payload), with_vector=with_vectors
            )
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
        with self._reading(collection):  # a damaged payload page may only fail as it is read
            fields = None if isinstance(payload, bool) or collection not in self._payloads else tuple(payload)
            results = self._query(collection, vectors, limit, where, payload if fields is None else False, exact,
                                  hnsw_ef)
            if fields is None:
                # Reading p.id would build a uuid.UUID per point (a third of the conversion cost): Hit reads it late.
                return [[Hit(p, p.score, p.payload or {}) for p in r] for r in results]
            # p.id builds a new uuid.UUID on every read: read once per point.
            rows = [[(pid, point_key(pid), p.score) for p in r for pid in (p.id,)] for r in results]
        # The fields asked for come from the payload cache; those it lacks, from one retrieve for the batch.
        found = self._payloads[collection].read([(pid, key) for row in rows for pid, key, _ in row], fields,
                                                lambda missing: self._retrieve(collection, missing, False, payload))
        # A point deleted between the query and the retrieve is left out.
        return [[Hit(pid, score, found[pid]) for pid, _, score in row if pid in found] for row in rows]

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
        with self._reading(collection):
            results = self._query(collection, vectors, limit, where, False, exact, hnsw_ef)
            # Each uuid.UUID the binding builds for p.id is freed at once: only its integer is kept.
            return [([point_key(p.id) for p in r], [p.score for p in r]) for r in results]

    def _query(self, collection: str, vectors: np.ndarray, limit: int, where: WhereLike | None,
               payload: bool | Sequence[str], exact: bool, hnsw_ef: int | None) -> list[Any]:
        if len(vectors) == 0:
            return []
        flt = build_filter(where, qe)
        # Rescoring the int8 candidates with the original vectors keeps every returned score an exact cosine.
        params = qe.SearchParams(exact=exact, hnsw_ef=hnsw_ef, quantization=qe.QuantizationSearchParams(rescore=True))
        with_payload = payload_selector(payload)
        requests = [
            qe.QueryRequest(
                limit=limit, query=qe.Query.Nearest(v.tolist()), filter=flt, with_payload=with_payload, params=params
            )
            for v in vectors
        ]
        return list(self._shard(collection).query_batch(qe.QueryBatchRequest(requests)))

    def scroll(
        self,
        collection: str,
        *,
        where: WhereLike | None = None,
        payload: bool | Sequence[str] = True,
        batch: int = 1000, start: str | None = None,
    ) -> Iterator[Record]:
        shard = self._shard(collection)
        offset: Any = start
        while True:
            with self._reading(collection):
                page, offset = shard.scroll(
                    qe.ScrollRequest(
                        offset=offset, limit=batch, filter=build_filter(where, qe),
                        with_payload=payload_selector(payload), with_vector=False,
                    )
                )
                records = [to_record(r, with_vectors=False) for r in page]
            yield from records
            if offset is None:
                return

    def scroll_page(self, collection: str, *, offset: str | None, limit: int) -> list[Record]:
        with self._reading(collection):
            records, _ = self._shard(collection).scroll(
                qe.ScrollRequest(offset=offset, limit=limit, with_payload=True, with_vector=False))
            return [to_record(r, with_vectors=False) for r in records]

    def count(self, collection: str, *, where: WhereLike | None = None) -> int:
        with self._reading(collection):
            return int(self._shard(collection).count(qe.CountRequest(exact=True, filter=build_filter(where, qe))))

    def set_payload(self, collection: str, ids: Sequence[str], payload: dict[str, Any]) -> None:
        if ids:
            with self._lock:
                self._update(collection, qe.UpdateOperation.set_payload(list(ids), payload), ids)

    def update_vectors(self, collection: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        if ids:
            with self._lock:
                points = [qe.PointVectors(pid, vec.tolist()) for pid, vec in zip(ids, vectors)]
                self._update(collection, qe.UpdateOperation.update_vectors(points), ids)

    def create_keyword_index(self, collection: str, field: str) -> None:
        shard = self._shard(collection)
        with self._lock:
            if field not in shard.info().payload_schema:
                params = qe.KeywordIndexParams(is_tenant=field == TENANT_INDEX)
                self._update(collection, qe.UpdateOperation.create_field_index(field, params), [])  # no payload changes

    def delete_payload(self, collection: str, ids: Sequence[str], keys: Sequence[str]) -> None:
        if ids and keys:
            with self._lock:
                self._update(collection, qe.UpdateOperation.delete_payload(list(ids), list(keys)), ids)

    def delete_where(self, collection: str, where: WhereLike) -> None:
        with self._lock:
            self._update(collection, qe.UpdateOperation.delete_points_by_filter(build_filter(where, qe)), None)

    def distinct(self, collection: str, field: str, *, where: WhereLike | None = None) -> dict[str, int]:
        with self._reading(collection):
            response = self._shard(collection).facet(
                qe.FacetRequest(key=field, limit=1_000_000, exact=True, filter=build_filter(where, qe))
            )
        return {str(hit.value): hit.count for hit in response.hits if hit.count > 0}  # Edge keeps emptied values

    def optimize(self) -> None:  # Edge holds Python's lock throughout: 30 s for 100,000 new memory points
        with self._lock:
            for name, shard in self._shards.items():
                try:
                    shard.optimize()
                except Exception as exc:  # the store is as it was, its new points searched without an index
                    raise StoreError(engine_failure(exc, f"indexing {name!r} of {self.describe()}")) from exc

    def unindexed(self) -> int:  # indexed at `optimize` once past Qdrant's threshold (10,000 KB of vectors)
        return sum(i.points_count - i.indexed_vectors_count for i in (s.info() for s in list(self._shards.values())))

    def at_generation(self, generation: int) -> EdgeStore:
        return EdgeStore(self.path, create=True, generation=generation)

    def rebuild_view(self) -> EdgeStore:
        next_file = self.path / NEXT_MANIFEST_FILE
        pending = read_next_generation(next_file)
        keep = {self.generation, *(g for g in [self._previous_generation()] if g)}
        generation = pending or max([*keep, *self._generations_on_disk()]) + 1
        for g in self._generations_on_disk() - keep - {generation}:  # leftovers of stopped rebuilds
            self.drop_generation(g)
        return EdgeStore(self.path, create=True, generation=generation, manifest_file=NEXT_MANIFEST_FILE)

    def promote(self, view: Store) -> None:
        if not isinstance(view, EdgeStore) or view.manifest_path.name != NEXT_MANIFEST_FILE:
            raise StoreError("promote() takes the view that rebuild_view() gave")
        new = view.manifest
        view.close()
        with self._lock:
            self.close()
            # The rename is the swap: a crash before it leaves the old store serving, after it the new one.
            os.replace(view.manifest_path, self.path / MANIFEST_FILE)
            fsync_dir(self.path)
            self.generation = new.generation
            for name in COLLECTIONS:
                self._shards[name] = self._load_shard(name)
        for g in self._generations_on_disk() - {self.generation}:
            self.drop_generation(g)

    def _generations_on_disk(self) -> set[int]:
        return generations_on_disk(self.path)

    def _previous_generation(self) -> int | None:
        manifest = self._read_manifest()
        previous = manifest.previous if manifest else None
        return int(previous["generation"]) if previous and "generation" in previous else None

    def swap_to(self, generation: int, **manifest_updates: Any) -> None:
        # The manifest names the serving generation, and it is replaced atomically: that rename is the swap.
        with self._lock:
            self.close()
            self.update_manifest(**manifest_updates, generation=generation)
            self.generation = generation
            for name in COLLECTIONS:
                self._shards[name] = self._load_shard(name)

    def drop_generation(self, generation: int) -> None:
        if generation == self.generation:
            raise StoreCorruptError("refusing to drop the generation that serves")
        for name in COLLECTIONS:
            layout.drop_whole(self._dir(name, generation))

    def drop(self) -> None:
        """The collections and the manifest go; the service's documents (API keys, audit log) stay."""
        self.close()
        # The constructor refused any directory holding anything but a store, so this only ever removes a store.
        for item in self.path.iterdir():
            if is_document_file(item.name):
                continue
            if item.is_dir():
                shutil.rmtree(item)
            else:
                item.unlink()

    def documents(self) -> FileDocuments:
        return FileDocuments(self.path)

    def close(self) -> None:
        with self._lock:
            for cache in self._payloads.values():  # the shards a later load opens may hold anything
                cache.clear()
            for shard in self._shards.values():
                try:
                    shard.flush()
                finally:
                    shard.close()
            self._shards.clear()
