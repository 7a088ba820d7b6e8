"""Small JSON documents kept with a store, beside its collections: the service's API keys (a keyed set) and its
audit log (an append-only log). Every replica of the service that reaches the store sees the same ones.

- Embedded store: files in the store directory, `<kind>.json` (a keyed set, rewritten atomically) and
  `<kind>.jsonl` (a log, appended with fsync), under an exclusive file lock. They are reached without opening the
  Qdrant Edge shards, so `knnbe-qdrant keys create` works while a service holds the store.
- Server: points of the vectorless `<prefix>meta` collection (where the manifest lives), payload `kind`.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from .._errors import StoreCorruptError

_NAMESPACE = uuid.UUID("0f7c1f0e-8f0c-4a83-b2a6-4a1b7d3c9e21")
FILES = ("keys.json", "hiders.json", "audit.jsonl", ".documents.lock")
"""What FileDocuments may leave in a store directory besides the store itself."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Documents(ABC):
    """Keyed documents (`put`, `all`) and append-only logs (`append`, `tail`), by kind."""

    @abstractmethod
    def all(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every document of `kind`, by id."""

    @abstractmethod
    def put(self, kind: str, doc_id: str, document: dict[str, Any]) -> None:
        """Insert or replace one document; returns once it is durable."""

    @abstractmethod
    def append(self, kind: str, entry: dict[str, Any]) -> None:
        """Add an entry to the log `kind` (its time is recorded as `at`); returns once it is durable."""

    @abstractmethod
    def tail(self, kind: str, n: int) -> list[dict[str, Any]]:
        """The last `n` entries of the log `kind`, newest first."""

    def version(self, kind: str) -> object:
        """Changes whenever the documents of `kind` may have changed (lets readers cache); None: always re-read."""
        return None

    def close(self) -> None:  # noqa: B027  (files need nothing; a server connection does)
        """Release what reaching the documents took (a server connection); files need nothing."""


class FileDocuments(Documents):
    def __init__(self, root: Path) -> None:
        self.root = root

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".documents.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
            yield

    def all(self, kind: str) -> dict[str, dict[str, Any]]:
        path = self.root / f"{kind}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreCorruptError(f"{path} is damaged ({exc}); restore it from a backup") from exc
        if not isinstance(data, dict):
            raise StoreCorruptError(f"{path} is damaged (not a JSON object); restore it from a backup")
        return data

    def put(self, kind: str, doc_id: str, document: dict[str, Any]) -> None:
        path = self.root / f"{kind}.json"
        with self._locked():
            data = self.all(kind)
            data[doc_id] = document
            tmp = path.with_suffix(".json.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)  # key hashes: readable by the store's owner only
            os.replace(tmp, path)
            fsync_dir(self.root)

    def append(self, kind: str, entry: dict[str, Any]) -> None:
        line = json.dumps({**entry, "at": _now()}, ensure_ascii=False) + "\n"
        with self._locked(), open(self.root / f"{kind}.jsonl", "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def tail(self, kind: str, n: int) -> list[dict[str, Any]]:
        path = self.root / f"{kind}.jsonl"
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                block, data = 1 << 16, b""
                while size > 0 and data.count(b"\n") <= n:
                    step = min(block, size)
                    size -= step
                    f.seek(size)
                    data = f.read(step) + data
        except FileNotFoundError:
            return []
        entries = []
        for raw in reversed(data.splitlines()):
            try:
                entries.append(json.loads(raw))
            except ValueError:
                continue  # a torn last line from a crash, or the cut at the start of the block
            if len(entries) == n:
                break
        return entries

    def version(self, kind: str) -> object:
        try:
            st = os.stat(self.root / f"{kind}.json")
        except FileNotFoundError:
            return 0
        return (st.st_mtime_ns, st.st_size, st.st_ino)


class MetaCollection(Protocol):
    """What MetaDocuments needs of a server store (QdrantClientStore provides it)."""

    def put_meta(self, point_id: str, payload: dict[str, Any]) -> None: ...

    def scroll_meta(self, kind: str) -> Iterator[Any]: ...

    def close(self) -> None: ...


class MetaDocuments(Documents):
    """Documents as points of the server store's meta collection."""

    def __init__(self, store: MetaCollection, *, owned: bool = False) -> None:
        self.store = store
        self.owned = owned  # opened for these documents alone: closed with them

    def close(self) -> None:
        if self.owned:
            self.store.close()

    def _point_id(self, kind: str, doc_id: str) -> str:
        return str(uuid.uuid5(_NAMESPACE, json.dumps([kind, doc_id])))

    def _scroll(self, kind: str) -> list[dict[str, Any]]:
        return [r.payload for r in self.store.scroll_meta(kind)]

    def all(self, kind: str) -> dict[str, dict[str, Any]]:
        return {p["doc_id"]: p["document"] for p in self._scroll(kind) if "doc_id" in p}

    def put(self, kind: str, doc_id: str, document: dict[str, Any]) -> None:
        self.store.put_meta(self._point_id(kind, doc_id), {"kind": kind, "doc_id": doc_id, "document": document})

    def append(self, kind: str, entry: dict[str, Any]) -> None:
        self.store.put_meta(str(uuid.uuid4()), {"kind": kind, "entry": {**entry, "at": _now()}})

    def tail(self, kind: str, n: int) -> list[dict[str, Any]]:
        entries = [p["entry"] for p in self._scroll(kind) if "entry" in p]
        entries.sort(key=lambda e: e.get("at", ""), reverse=True)
        return entries[:n]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
