"""The store's small documents (documents.Documents) on a server: points of the vectorless `<prefix>meta` collection
(where the manifest lives), payload `kind`; a keyed document's id is its point's, a log's entries are points of
their own ordered by the write's clock (`written_ns`)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .._errors import StoreError
from .documents import Documents, entry_time

if TYPE_CHECKING:  # the client store makes these documents; this module needs nothing of it at import time
    from .client import QdrantClientStore

_NAMESPACE = uuid.UUID("0f7c1f0e-8f0c-4a83-b2a6-4a1b7d3c9e21")
RESTORING_LOGS = "restoring_logs"
"""A keyed document per log a restore writes: `done` false while it writes (a server's log is written in batches)."""
WRITE_BATCH = 1_000
"""Entries a restore (or a store's first split of its log into the tenants') writes in one request."""
LOG_PAGE = 1_000
"""Entries a backup reads in one request to the server."""
ORDERED_TAIL = 10_000
"""The longest tail a server's log gives from its `written_ns` index; a longer one (a backup's) reads the whole log."""


class MetaDocuments(Documents):
    """Documents as points of the server store's meta collection."""

    def __init__(self, store: QdrantClientStore, *, owned: bool = False) -> None:
        self.store = store
        self.owned = owned  # opened for these documents alone: closed with them

    def close(self) -> None:
        if self.owned:
            self.store.close()

    def _point_id(self, kind: str, doc_id: str) -> str:
        return str(uuid.uuid5(_NAMESPACE, json.dumps([kind, doc_id])))

    def _scroll(self, kind: str) -> list[dict[str, Any]]:
        from qdrant_client import models

        return self._payloads(models.Filter(must=[_of_kind(kind)]))

    def _payloads(self, where: Any, fields: bool | list[str] = True) -> list[dict[str, Any]]:
        """The payloads of the meta points `where` selects, page after page."""
        if not self.store.meta_exists():
            return []
        out, offset = [], None
        while True:
            records, offset = self.store._call(self.store.client.scroll, self.store.meta_collection(),
                                               scroll_filter=where, limit=1000, offset=offset, with_payload=fields,
                                               with_vectors=False)
            out += [dict(r.payload or {}) for r in records]
            if offset is None:
                return out

    def _put(self, point_id: str, payload: dict[str, Any], *, new: bool = False) -> bool:
        """Upsert one meta point; with `new`, only where no point has this id (one conditional upsert, so of two
        writers racing for one id one wins), telling whether this call inserted it."""
        from qdrant_client import models

        meta, token = self.store.meta_collection(), uuid.uuid4().hex
        mode = models.UpdateMode.INSERT_ONLY if new else None
        point = models.PointStruct(id=point_id, vector={}, payload={**payload, "_write": token})
        self.store._call(self.store.client.upsert, meta, points=[point], update_mode=mode, wait=True)
        if not new:
            return True
        found = self.store._call(self.store.client.retrieve, meta, [point_id], with_payload=["_write"])
        return bool(found) and (found[0].payload or {}).get("_write") == token

    def all(self, kind: str) -> dict[str, dict[str, Any]]:
        return {p["doc_id"]: p["document"] for p in self._scroll(kind) if "doc_id" in p}

    def put_many(self, kind: str, documents: dict[str, dict[str, Any]]) -> None:
        for doc_id, document in documents.items():
            self._put(self._point_id(kind, doc_id), {"kind": kind, "doc_id": doc_id, "document": document})

    def put_new(self, kind: str, doc_id: str, document: dict[str, Any]) -> bool:
        return self._put(self._point_id(kind, doc_id), {"kind": kind, "doc_id": doc_id, "document": document},
                         new=True)

    def append(self, kind: str, entry: dict[str, Any]) -> None:
        # Points come back in id order: the write's clock orders entries of one millisecond (or a restored entry,
        # which keeps its time) as they were appended.
        stamped = {"at": entry_time(), **entry}
        self._put(str(uuid.uuid4()), {"kind": kind, "entry": stamped, "written_ns": time.time_ns()})

    def extend(self, kind: str, entries: list[dict[str, Any]]) -> None:
        self._write_entries(kind, entries, lambda _: str(uuid.uuid4()))

    def restore_log(self, kind: str, entries: Iterable[dict[str, Any]]) -> bool:
        # A restore killed half-way left part of the log: its mark says so, and the next one writes it again over
        # the same points (their ids are the entries' places), then takes the mark off.
        restoring = self.all(RESTORING_LOGS).get(kind, {}).get("done") is False
        if not restoring and self.log_length(kind):
            return False
        self.put(RESTORING_LOGS, kind, {"done": False})
        self._write_entries(kind, entries, lambda place: self._point_id(f"{kind} restored", str(place)))
        self.put(RESTORING_LOGS, kind, {"done": True})
        return True

    def _write_entries(self, kind: str, entries: Iterable[dict[str, Any]], point_id: Callable[[int], str]) -> None:
        """Entries appended in their order, WRITE_BATCH to a request (one a request took a million requests for a
        tenant's log at its quota)."""
        from qdrant_client import models

        meta, clock, batch = self.store.meta_collection(), time.time_ns(), []
        for place, entry in enumerate(entries):
            batch.append(models.PointStruct(
                id=point_id(place), vector={},
                payload={"kind": kind, "entry": {"at": entry_time(), **entry}, "written_ns": clock + place}))
            if len(batch) == WRITE_BATCH:
                self.store._call(self.store.client.upsert, meta, points=batch, wait=True)
                batch = []
        if batch:
            self.store._call(self.store.client.upsert, meta, points=batch, wait=True)

    def tail(self, kind: str, n: int) -> list[dict[str, Any]]:
        if n > ORDERED_TAIL or not self.store.meta_exists():  # a backup's read of everything
            return self._sorted_tail(kind, n)
        # The newest n by the write's clock, which an integer index serves: not the whole log read and sorted on
        # every read of its tail, as until 2026-12-06.
        try:
            records = self._by_clock(kind, n, newest_first=True)
        except StoreError:  # no index to order by (a read-only key could not make it): the whole log, sorted
            return self._sorted_tail(kind, n)
        entries = [e for r in records if isinstance(e := (r.payload or {}).get("entry"), dict)]  # not damaged
        if len(records) < n:  # entries appended before `written_ns` existed: older than every one that has it
            entries += self._unclocked(kind, newest_first=True)[: n - len(records)]
        return entries

    def _unclocked(self, kind: str, *, newest_first: bool) -> list[dict[str, Any]]:
        """The log's entries from before the write's clock (`written_ns`), read whole and sorted by time."""
        from qdrant_client import models

        unclocked = models.Filter(must=[_of_kind(kind), models.IsEmptyCondition(
            is_empty=models.PayloadField(key="written_ns"))])
        found = (p.get("entry") for p in self._payloads(unclocked, ["entry"]))
        return sorted((e for e in found if isinstance(e, dict)), key=lambda e: str(e.get("at", "")),
                      reverse=newest_first)

    def iter_entries(self, kind: str) -> Iterator[dict[str, Any]]:
        """Oldest first, a page at a time from the index on the write's clock (a backup's read: not the whole log
        read and sorted in memory). Entries from before the clock come first, read whole: they are older."""
        if not self.store.meta_exists():
            return
        try:
            records = self._by_clock(kind, LOG_PAGE)
        except StoreError:  # no index to order by (a read-only key could not make it): the whole log, sorted
            yield from self.entries(kind)
            return
        yield from self._unclocked(kind, newest_first=False)
        seen: set[Any] = set()  # the points of the clock a page starts at that the last page gave already
        while True:
            fresh = [r for r in records if r.id not in seen]
            for r in fresh:
                entry = (r.payload or {}).get("entry")
                if isinstance(entry, dict):  # not damaged
                    yield entry
            if len(records) < LOG_PAGE or not fresh:
                return
            start = (records[-1].payload or {}).get("written_ns")
            seen = {r.id for r in records if (r.payload or {}).get("written_ns") == start}
            records = self._by_clock(kind, LOG_PAGE, start=start)

    def _by_clock(self, kind: str, limit: int, *, newest_first: bool = False, start: int | None = None) -> list[Any]:
        """`limit` of the log's points in the order of the write's clock (from `start` on), which an integer index
        serves; StoreError where there is none to order by."""
        from qdrant_client import models

        order = models.OrderBy(key="written_ns", start_from=start,
                               direction=models.Direction.DESC if newest_first else models.Direction.ASC)
        records, _ = self.store._call(self.store.client.scroll, self.store.meta_collection(),
                                      scroll_filter=models.Filter(must=[_of_kind(kind)]), limit=limit,
                                      order_by=order, with_payload=["entry", "written_ns"], with_vectors=False)
        return list(records)

    def _sorted_tail(self, kind: str, n: int) -> list[dict[str, Any]]:
        points = [p for p in self._scroll(kind) if isinstance(p.get("entry"), dict)]
        points.sort(key=lambda p: (str(p["entry"].get("at", "")), p.get("written_ns", 0)), reverse=True)
        return [p["entry"] for p in points[:n]]

    def log_length(self, kind: str) -> int:
        if not self.store.meta_exists():
            return 0
        return int(self.store._call(self.store.client.count, self.store.meta_collection(),
                                    count_filter=_entries(kind), exact=True).count)

    def logs(self) -> list[str]:
        if not self.store.meta_exists():
            return []
        # The kinds by the index on `kind` (a facet), not every entry of every log read for its kind.
        found = self.store._call(self.store.client.facet, self.store.meta_collection(), key="kind",
                                 facet_filter=_entries(None), limit=1_000_000, exact=True)
        return sorted(str(hit.value) for hit in found.hits if hit.count > 0)

    def clear_log(self, kind: str) -> None:
        from qdrant_client import models

        if not self.store.meta_exists():
            return
        self.store._call(self.store.client.delete, self.store.meta_collection(),
                         points_selector=models.FilterSelector(filter=_entries(kind)), wait=True)


def _of_kind(kind: str) -> Any:
    from qdrant_client import models

    return models.FieldCondition(key="kind", match=models.MatchValue(value=kind))


def _entries(kind: str | None) -> Any:
    """The filter of the log entries of `kind` (None: of every log), not the keyed documents of that kind."""
    from qdrant_client import models

    return models.Filter(must=_of_kind(kind) if kind is not None else None,
                         must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key="entry"))])
