"""Payload fields of an embedded store's skill points, kept between reads: decoding a skill point's payload costs
Qdrant Edge about 7 µs (all of it, whatever fields are asked for), and mapping reads 32 skills per sentence.

Exact, not eventually fresh: an embedded store's shards are written only through the one EdgeStore that opened them
(Edge refuses a second open, even in the same process), and each write runs inside `writing`. While a write is in
flight the cache answers nothing, so every read goes to the shard, as it would without a cache; the points it
touches are forgotten when it begins and when it ends; and a read that a write's start or end came between cannot
file what it read (`epoch`). So a read served from here gives what the shard would have given at that moment."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Record

Fields = tuple[str, ...]


class PayloadCache:
    """{point key: {fields asked: payload}} for one collection. Thread-safe, and bounded in payloads, not points:
    each tenant's reads ask for its own hide key, so a point may be held once per tenant (a full cache starts over)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._data: dict[Any, dict[Fields, dict[str, Any]]] = {}
        self._size = 0  # payloads held
        self._lock = threading.Lock()
        self._epoch = 0
        self._writes = 0

    @property
    def epoch(self) -> int:
        """Read it before reading payloads from the shard, and hand it to `put`."""
        return self._epoch

    def get(self, key: Any, fields: Fields) -> dict[str, Any] | None:
        """A copy (callers may change what they get), or None."""
        if self._writes:
            return None
        entry = self._data.get(key)
        payload = entry.get(fields) if entry is not None else None
        return dict(payload) if payload is not None else None

    def put(self, epoch: int, fields: Fields, payloads: dict[Any, dict[str, Any]]) -> None:
        """File payloads read since `epoch`, unless a write came meanwhile (then they may be older than it)."""
        with self._lock:
            if epoch != self._epoch:
                return
            if self._size + len(payloads) > self.capacity:
                self._data.clear()
                self._size = 0
            for key, payload in payloads.items():
                entry = self._data.setdefault(key, {})
                self._size += fields not in entry
                entry[fields] = dict(payload)

    @contextmanager
    def writing(self, keys: Iterable[Any] | None) -> Iterator[None]:
        """Around a write of these points (None: any point)."""
        keys = None if keys is None else list(keys)
        self._forget(keys, +1)
        try:
            yield
        finally:
            self._forget(keys, -1)

    def clear(self) -> None:
        """Everything read afresh: the shard was replaced (a new build, a swap of generations)."""
        self._forget(None, 0)

    def _forget(self, keys: list[Any] | None, writes: int) -> None:
        with self._lock:
            self._epoch += 1
            self._writes += writes
            if keys is None:
                self._data.clear()
                self._size = 0
                return
            for key in keys:
                self._size -= len(self._data.pop(key, ()))

    def read(self, points: Sequence[tuple[Any, Any]], fields: Fields,
             fetch: Callable[[list[str]], list[Record]]) -> dict[Any, dict[str, Any]]:
        """{point id: its `fields`} for (point id, key) pairs: from here, and those not here from `fetch` (one
        read of the shard, by id strings) and filed. A point `fetch` does not find (deleted) is absent."""
        out: dict[Any, dict[str, Any]] = {}
        missing: dict[str, tuple[Any, Any]] = {}
        for pid, key in points:
            if pid in out:
                continue
            payload = self.get(key, fields)
            if payload is None:
                missing[str(pid)] = (pid, key)
            else:
                out[pid] = payload
        if missing:
            epoch = self.epoch  # before the read: a write from now on keeps what it gives out of the cache
            fetched = {}
            for record in fetch(list(missing)):
                if record.id in missing:
                    pid, key = missing[record.id]
                    out[pid] = fetched[key] = record.payload
            self.put(epoch, fields, fetched)
        return out

    def __len__(self) -> int:
        return self._size
