"""Small JSON documents kept with a store, beside its collections: the service's API keys (a keyed set) and its
audit log (an append-only log). Every replica of the service that reaches the store sees the same ones.
- Embedded store: files in the store directory (named by document_files), `<kind>.json` (a keyed set, rewritten
  atomically) and `<kind>.jsonl` (a log, appended with fsync), under an exclusive file lock. They are reached
  without opening the Qdrant Edge shards, so `knnbe-qdrant keys create` works while a service holds the store.
- Server: points of the vectorless `<prefix>meta` collection (meta_documents)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

from .._errors import KnnbeError, StoreCorruptError, StoreError
from .document_files import AUDIT, file_stem, is_document_file, kind_of

_RESTORE = ("restore the store with `knnbe-qdrant restore --force BACKUP_DIR` (a backup made with `knnbe-qdrant "
            "backup`, which keeps the keys and the audit log)")
TAIL_BYTES = 4 << 20
"""The most a `tail` of a log file reads: old entries beyond it are not shown (they stay in the file)."""
AUDIT_SPLIT = "audit_split"
"""A keyed document: present once the tenants' logs were filled from the shared log of a store that had only it
(split_tenant_audit)."""


def tenant_audit(tenant: str) -> str:
    """The log of one tenant's edits, which its keys read. Its own log, not a filter over the shared one: another
    tenant's flood of edits cannot push this tenant's out of its view, nor make its reads longer. `tenant` is a
    checked name (letters, digits, "_", ".", "-"); its file's name is case-safe (document_files)."""
    return f"{AUDIT}@{tenant}"


def audit_tenant(kind: str) -> str | None:
    """The tenant whose own log `kind` is (tenant_audit's inverse); None for any other kind."""
    tenant = kind.removeprefix(f"{AUDIT}@")
    return tenant if tenant != kind else None


TENANT_DELETE = "tenant delete"
"""The action of the audit entry a tenant's deletion leaves (`tenant_deleted` names it): its history ends there."""
AUDIT_TEXT = 300
"""Characters of each text an audit entry keeps (the edit itself is in the store, whole)."""


def record_edit(documents: Documents, tenant: str | None, who: str, action: str, **details: Any) -> None:
    """An audit entry for an edit: in the tenant's own log (what its keys read) and in the log of every edit.
    Texts are cut, so that an entry stays small whatever was edited and reading a log's tail stays cheap."""
    short = {k: v if not isinstance(v, str) or len(v) <= AUDIT_TEXT else v[:AUDIT_TEXT] + "…"
             for k, v in details.items()}
    entry = {"tenant": tenant, "key": who, "action": action, **short}
    try:
        if tenant is not None:
            documents.append(tenant_audit(tenant), entry)
        documents.append(AUDIT, entry)
    except (KnnbeError, OSError) as exc:
        # The edit is in the store already: say so, and keep the entry where an operator finds it.
        logging.getLogger("knnbe_qdrant.audit").error("audit entry not written: %s", json.dumps(entry))
        raise StoreError(f"the edit was made, but its audit entry could not be written ({exc}); the entry is in "
                         "the log of the service or command (logger knnbe_qdrant.audit)") from exc


def split_tenant_audit(documents: Documents, tenants: Callable[[], Iterable[str]]) -> None:
    """Give each tenant the log of its own edits that a store from before the tenants' logs lacks: its entries of
    the shared log, from after its last deletion, for the tenants that exist (a tenant made later under a deleted
    one's name starts without its history). Once per store, before a service's first request or a command's first
    recorded edit; a tenant whose log already holds entries (written since by another replica) is left as it is."""
    if documents.all(AUDIT_SPLIT):
        return
    own: dict[str, list[dict[str, Any]]] = {}
    for entry in documents.entries(AUDIT):  # oldest first
        if entry.get("action") == TENANT_DELETE:
            own.pop(str(entry.get("tenant_deleted")), None)
        elif entry.get("tenant"):
            own.setdefault(str(entry["tenant"]), []).append(entry)
    present, existing = set(documents.logs()), set(tenants()) if own else set()
    for tenant, entries in own.items():
        if tenant in existing and tenant_audit(tenant) not in present:
            documents.extend(tenant_audit(tenant), entries)
    documents.put(AUDIT_SPLIT, "done", {"at": entry_time(), "tenants": len(own)})


def entry_time() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _entry(raw: bytes) -> dict[str, Any] | None:  # None: torn by a crash, or damaged (`5` made /v1/audit a 500)
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


class Documents(ABC):
    """Keyed documents (`put`, `all`) and append-only logs (`append`, `tail`), by kind."""

    @abstractmethod
    def all(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every document of `kind`, by id."""

    def put(self, kind: str, doc_id: str, document: dict[str, Any]) -> None:
        """Insert or replace one document; returns once it is durable."""
        self.put_many(kind, {doc_id: document})

    @abstractmethod
    def put_many(self, kind: str, documents: dict[str, dict[str, Any]]) -> None:
        """Insert or replace these documents, by id, in one write on files; returns once they are durable."""

    @abstractmethod
    def put_new(self, kind: str, doc_id: str, document: dict[str, Any]) -> bool:
        """Insert one document unless one with this id exists, atomically (two writers racing for one id: one
        wins); True when this call inserted it. Returns once it is durable."""

    @abstractmethod
    def append(self, kind: str, entry: dict[str, Any]) -> None:
        """Add an entry to the log `kind` (its time is recorded as `at`); returns once it is durable."""

    @abstractmethod
    def tail(self, kind: str, n: int) -> list[dict[str, Any]]:
        """The last `n` entries of the log `kind`, newest first."""

    def entries(self, kind: str) -> list[dict[str, Any]]:
        """Every entry of the log `kind`, oldest first (a backup's read): not bounded as a `tail` may be."""
        return self.tail(kind, 10**12)[::-1]

    def iter_entries(self, kind: str) -> Iterator[dict[str, Any]]:
        """`entries`, read as they are used (a backup's read: a tenant's log may hold a million entries). Files and
        a server's meta collection read a line or a page at a time; this default reads the log whole."""
        return iter(self.entries(kind))

    def extend(self, kind: str, entries: list[dict[str, Any]]) -> None:  # entries kept in their order
        for entry in entries:
            self.append(kind, entry)

    @abstractmethod
    def restore_log(self, kind: str, entries: Iterable[dict[str, Any]]) -> bool:
        """A restore's write of the whole log `kind`, in order, where that log holds no entry: all of it or none
        of it, so that a restore killed half-way and run again writes it once, whole. False where the log held
        entries (a store edited since the backup keeps its own history): nothing written."""

    @abstractmethod
    def log_length(self, kind: str) -> int:
        """How many entries the log of `kind` holds (on files: its lines, a torn or damaged one included)."""

    @abstractmethod
    def logs(self) -> list[str]:
        """The kinds of the logs that hold entries."""

    @abstractmethod
    def clear_log(self, kind: str) -> None:
        """Remove every entry of the log `kind`; returns once that is durable."""

    def version(self, kind: str) -> object:
        """Changes whenever the documents of `kind` may have changed (lets readers cache); None: always re-read."""
        return None

    def close(self) -> None:  # noqa: B027  (files need nothing; a server connection does)
        """Release what reaching the documents took (a server connection); files need nothing."""


class FileDocuments(Documents):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, kind: str, suffix: str) -> Path:
        path = self.root / f"{file_stem(kind)}{suffix}"
        legacy = self.root / f"{kind}{suffix}"
        # A log named before names were case-safe moves to its name once, read by its exact name: on a file system
        # that ignores case, `legacy` may be another tenant's log. Not under the lock, which the caller may hold.
        if legacy != path and not path.exists() and legacy.name in os.listdir(self.root):
            with suppress(FileNotFoundError):  # another process moved it first
                os.replace(legacy, path)
                fsync_dir(self.root)
        return path

    @contextmanager
    def _locked(self) -> Iterator[None]:  # a write the disk refuses is one clear error (`keys create` was a traceback)
        try:
            with open(self.root / ".documents.lock", "a+") as f:
                fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
                yield
        except OSError as exc:
            raise StoreError(f"cannot write the documents in {self.root} ({exc.strerror or exc}): free space or "
                             "fix the folder's permissions, and try again") from exc

    def all(self, kind: str) -> dict[str, dict[str, Any]]:
        path = self._path(kind, ".json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreCorruptError(f"{path} is damaged ({exc}); {_RESTORE}") from exc
        if not isinstance(data, dict):
            raise StoreCorruptError(f"{path} is damaged (not a JSON object); {_RESTORE}")
        return data

    def put_many(self, kind: str, documents: dict[str, dict[str, Any]]) -> None:
        with self._locked():
            self._write(kind, {**self.all(kind), **documents})

    def put_new(self, kind: str, doc_id: str, document: dict[str, Any]) -> bool:
        with self._locked():  # the check and the write under one file lock, shared by every process
            data = self.all(kind)
            if doc_id in data:
                return False
            self._write(kind, {**data, doc_id: document})
            return True

    def _write(self, kind: str, data: dict[str, Any]) -> None:
        path = self._path(kind, ".json")
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # key hashes: readable by the store's owner only
        os.replace(tmp, path)
        fsync_dir(self.root)

    def append(self, kind: str, entry: dict[str, Any]) -> None:
        self.extend(kind, [entry])

    def extend(self, kind: str, entries: list[dict[str, Any]]) -> None:
        # One write and one fsync for a restore's whole log, not one per entry.
        line = "".join(json.dumps({"at": entry_time(), **e}, ensure_ascii=False) + "\n" for e in entries)  # `at` kept
        if not line:
            return
        with self._locked(), open(self._path(kind, ".jsonl"), "a+b") as f:
            # A line torn by a crash (or cut by a damaged disk) ends the file without its newline: the next entry
            # would join it and be unreadable too, so it starts a line of its own.
            end = f.seek(0, os.SEEK_END)
            if end:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def restore_log(self, kind: str, entries: Iterable[dict[str, Any]]) -> bool:
        path = self._path(kind, ".jsonl")
        if self.log_length(kind):
            return False
        # Written beside the log under a name no log has, then renamed into place: a killed restore leaves no
        # half log (which the next restore would take for the store's own history and keep).
        partial = path.with_name(f".{path.name}.restoring")
        try:
            written = 0
            with open(partial, "w", encoding="utf-8") as f:
                for entry in entries:
                    f.write(json.dumps({"at": entry_time(), **entry}, ensure_ascii=False) + "\n")
                    written += 1
                f.flush()
                os.fsync(f.fileno())
            if not written:  # no file for an empty log: a tenant's would list the tenant
                return True
            with self._locked():
                if self.log_length(kind):  # an entry appended meanwhile: the log is the store's own now
                    return False
                os.replace(partial, path)
                fsync_dir(self.root)
            return True
        except OSError as exc:
            raise StoreError(f"cannot write the log {path} ({exc.strerror or exc}): the store is unchanged "
                             "and the restore can be run again") from exc
        finally:
            with suppress(FileNotFoundError):
                partial.unlink()

    def iter_entries(self, kind: str) -> Iterator[dict[str, Any]]:
        try:
            with open(self._path(kind, ".jsonl"), "rb") as f:
                for raw in f:
                    entry = _entry(raw)
                    if entry is not None:  # a line torn by a crash is skipped
                        yield entry
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._unreadable(kind, exc) from exc

    def tail(self, kind: str, n: int) -> list[dict[str, Any]]:
        path = self._path(kind, ".jsonl")
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                blocks: list[bytes] = []
                lines = read = 0
                # Bounded: however long the log or its lines, one read takes at most TAIL_BYTES.
                while size > 0 and lines <= n and read < TAIL_BYTES:
                    step = min(1 << 16, size)
                    size -= step
                    f.seek(size)
                    blocks.append(f.read(step))
                    lines += blocks[-1].count(b"\n")
                    read += step
                data = b"".join(reversed(blocks))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._unreadable(kind, exc) from exc
        # A line that is no JSON is a torn last line from a crash, or the cut at the start of the block.
        return list(islice((e for raw in reversed(data.splitlines()) if (e := _entry(raw)) is not None), n))

    def entries(self, kind: str) -> list[dict[str, Any]]:
        return list(self.iter_entries(kind))

    def _unreadable(self, kind: str, exc: OSError) -> StoreError:
        # A log that cannot be read (its permissions, a disk error) was a 500 with no word of why on every edit of
        # its tenant once the audit quota counted it, and on every read of its tail.
        return StoreError(f"cannot read the log {self._path(kind, '.jsonl')} ({exc.strerror or exc}): fix its "
                          f"permissions, or {_RESTORE}")

    def log_length(self, kind: str) -> int:
        # Counted once, then only what was appended since: every edit under an audit quota asks.
        try:
            with open(self._path(kind, ".jsonl"), "rb") as f:
                st = os.fstat(f.fileno())
                with _lengths_lock:
                    inode, counted, lines = _lengths.get((self.root, kind), (None, 0, 0))
                if inode != st.st_ino or st.st_size < counted:  # another file since (cleared, restored)
                    counted, lines = 0, 0
                f.seek(counted)
                while block := f.read(1 << 20):
                    lines, counted = lines + block.count(b"\n"), counted + len(block)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise self._unreadable(kind, exc) from exc
        with _lengths_lock:
            _lengths[(self.root, kind)] = (st.st_ino, counted, lines)
        return lines

    def logs(self) -> list[str]:
        return sorted({kind_of(p.name[: -len(".jsonl")]) for p in self.root.iterdir()
                       if p.name.endswith(".jsonl") and is_document_file(p.name)})

    def clear_log(self, kind: str) -> None:
        with _lengths_lock:  # a new log may get the old one's inode number: count it afresh
            _lengths.pop((self.root, kind), None)
        with self._locked():
            try:
                self._path(kind, ".jsonl").unlink()
            except FileNotFoundError:
                return
            fsync_dir(self.root)

    def version(self, kind: str) -> object:
        try:
            st = os.stat(self._path(kind, ".json"))
        except FileNotFoundError:
            return 0
        return (st.st_mtime_ns, st.st_size, st.st_ino)


_lengths: dict[tuple[Path, str], tuple[int, int, int]] = {}  # (store, log) -> (inode, bytes counted, lines in them)
_lengths_lock = threading.Lock()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
