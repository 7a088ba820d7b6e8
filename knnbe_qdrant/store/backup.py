"""`knnbe-qdrant backup` / `restore`: a whole store, curated data included, as a folder that any backend can load
back without re-encoding anything.

A backup folder holds `backup.json` (the format, the store's manifest, and the SHA-256 and point or entry count of
every other file), one `<collection>.jsonl.gz` per collection (a point a line: id, payload, the float32 vector in
base64), `documents.json` (the service's keys, the tenants that hide points, the tombstones of removed points) and
`logs/<log>.jsonl.gz` (the audit log of every edit and each tenant's, an entry a line). It is written under a
temporary name and renamed when complete, so a killed backup never looks whole; a restore checks every checksum
and every line of the points, documents and logs before it writes anything, and replaces an existing store only with
`--force`, building beside it and swapping in atomically, as `build --force` does.

Logs are streamed, both ways: a tenant's audit log may hold a million entries (its quota), and format version 1,
which kept the logs in documents.json, read them all into memory to write a backup and to restore one (about 1 GB
of Python objects per million entries). A restore still reads version 1.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .._errors import InputFileError, InvalidInputError, StoreError
from .._schema import COLLECTIONS, HIDERS, KEYS, SCHEMA_VERSION, TOMBSTONES, Manifest, utc_now
from .base import Record, Store
from .document_files import is_document_file
from .documents import AUDIT_SPLIT, fsync_dir
from .integrity import point_problem

FORMAT = "knnbe-qdrant backup"
VERSION = 2
READS = (1, 2)
"""The format versions a restore reads: 1 kept the logs inside documents.json."""
LOGS = "logs"
"""The backup's folder of logs."""
KEYED_DOCUMENTS = (KEYS, HIDERS, TOMBSTONES, AUDIT_SPLIT)
LOG_DOCUMENTS = ("audit",)
_CHUNK = 1000
T = TypeVar("T")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def backup(store: Store, folder: str | os.PathLike[str]) -> dict[str, int]:
    """Write the whole store to `folder` (which must not exist yet); returns the points written per collection."""
    target = Path(folder).expanduser().absolute()
    if target.exists():
        raise InvalidInputError(f"{target} exists already: a backup goes into a new folder")
    if not target.parent.is_dir():
        raise InvalidInputError(f"{target}: the folder {target.parent} does not exist")
    inside = getattr(store, "path", None)
    if isinstance(inside, Path) and target.resolve().is_relative_to(inside.resolve()):
        raise InvalidInputError(f"{target} is inside the store it backs up: choose a folder outside {inside}")
    try:
        return _backup(store, target)
    except OSError as exc:
        raise StoreError(f"cannot write the backup to {target}: {exc.strerror or exc}; the store is unchanged, and "
                         f"{target.name}.partial can be deleted") from exc
    except StoreError:  # the store refused (damage found): what was written of the backup is of no use
        shutil.rmtree(target.with_name(target.name + ".partial"), ignore_errors=True)
        raise


def _backup(store: Store, target: Path) -> dict[str, int]:
    manifest = store.check_ready()
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # A copy of one moment: edits wait while the store is read (on a server other processes edit it meanwhile, and
    # a sentence moved between the listing of ids and their reading was in neither place).
    with store.edits_paused():
        files = _write_points_and_documents(store, tmp)
    index = {"format": FORMAT, "version": VERSION, "created_at": utc_now(), "source": store.describe(),
             "manifest": manifest.__dict__, "files": files}
    (tmp / "backup.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    for path in [*tmp.iterdir(), *(tmp / LOGS).iterdir()]:  # durable before the rename makes it a backup
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(tmp / LOGS)
    os.replace(tmp, target)
    return {c: files[f"{c}.jsonl.gz"]["points"] for c in COLLECTIONS}


def _write_points_and_documents(store: Store, tmp: Path) -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {}
    for collection in COLLECTIONS:
        name = f"{collection}.jsonl.gz"
        n = 0
        with gzip.open(tmp / name, "wt", encoding="utf-8", compresslevel=1) as f:
            ids = [r.id for r in store.scroll(collection, payload=False)]
            for start in range(0, len(ids), _CHUNK):
                for r in store.retrieve(collection, ids[start : start + _CHUNK], with_vectors=True):
                    # What a restore would refuse is said now, while the store is there to mend, not at the restore.
                    if (problem := point_problem(r, collection)) is not None:
                        raise store.damaged(f"point {r.id} of {collection!r} has {problem}, which no restore of "
                                            "the backup would take")
                    vector = base64.b64encode(np.asarray(r.vector, dtype="<f4").tobytes()).decode("ascii")
                    f.write(json.dumps({"id": r.id, "payload": r.payload, "vector": vector}, ensure_ascii=False))
                    f.write("\n")
                    n += 1
        files[name] = {"sha256": _sha256(tmp / name), "points": n}
    documents = store.documents()
    docs: dict[str, Any] = {kind: documents.all(kind) for kind in KEYED_DOCUMENTS}
    (tmp / "documents.json").write_text(json.dumps(docs, ensure_ascii=False), encoding="utf-8")
    files["documents.json"] = {"sha256": _sha256(tmp / "documents.json")}
    (tmp / LOGS).mkdir()
    for kind in sorted({*LOG_DOCUMENTS, *documents.logs()}):
        name, n = f"{LOGS}/{kind}.jsonl.gz", 0
        with gzip.open(tmp / name, "wt", encoding="utf-8", compresslevel=1) as f:
            for entry in documents.iter_entries(kind):
                f.write(json.dumps(entry, ensure_ascii=False))
                f.write("\n")
                n += 1
        files[name] = {"sha256": _sha256(tmp / name), "entries": n}
    return files


def read_index(folder: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The backup's index, every file checked against its checksum; InputFileError naming what is wrong."""
    root = Path(folder).expanduser()
    try:
        index = json.loads((root / "backup.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(f"{root} is not a backup: it has no backup.json "
                             "(a backup stopped half-way is left as <name>.partial)") from None
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{root / 'backup.json'} is damaged: {exc}") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("files"), dict):
        raise InputFileError(f"{root / 'backup.json'} is not a knnbe-qdrant backup index")
    if index.get("version") not in READS:
        raise InputFileError(f"{root} is a backup of format version {index.get('version')}; this knnbe-qdrant "
                             f"reads versions {', '.join(map(str, READS))}")
    for name, meta in index["files"].items():
        if name not in _POINT_FILES and name != "documents.json" and _log_kind(name) is None:
            raise InputFileError(f"{root / 'backup.json'} names {name!r}, which is no file a backup holds")
        if not isinstance(meta, dict):
            raise InputFileError(f"{root / 'backup.json'}: the entry of {name!r} is damaged")
        path = root / name
        if not path.is_file():
            raise InputFileError(f"{path} is missing from the backup")
        if _sha256(path) != meta.get("sha256"):
            raise InputFileError(f"{path} is damaged: its SHA-256 is not the one the backup recorded")
    try:
        Manifest.from_dict(index.get("manifest"))
    except ValueError as exc:
        raise InputFileError(f"{root / 'backup.json'}: its manifest is damaged: {exc}") from exc
    return root, index


_POINT_FILES = {f"{c}.jsonl.gz" for c in COLLECTIONS}


def _log_kind(name: str) -> str | None:
    """The log a backup's file `logs/<log>.jsonl.gz` holds; None for any other name (or a log no store has)."""
    kind = name.removeprefix(f"{LOGS}/").removesuffix(".jsonl.gz")
    return kind if f"{LOGS}/{kind}.jsonl.gz" == name and is_document_file(f"{kind}.jsonl") else None


def _json_lines(path: Path, what: str, read: Callable[[Any], T]) -> Iterator[T]:
    """`read` of each line's JSON, in order; InputFileError naming the file and line where one is not `what`."""
    done = 0  # lines read whole: a fault, in a line or in reading it, is on the next
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                item = read(json.loads(line))
                done += 1
                yield item
    except (ValueError, KeyError, TypeError, EOFError, OSError) as exc:  # not JSON or UTF-8, no gzip, cut short
        raise InputFileError(f"{path}:{done + 1}: not {what} ({exc})") from exc


def _log_entry(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInputError(f"a JSON {type(value).__name__}")  # a ValueError: the reader names file and line
    return value


def _log_entries(path: Path) -> Iterator[dict[str, Any]]:
    return _json_lines(path, "a log entry", _log_entry)


def _logs(root: Path, index: dict[str, Any], docs: dict[str, Any]) -> dict[str, Callable[[], Iterable[Any]]]:
    """Each log of the backup, as a way to read its entries in order: from `logs/` (format 2), each line checked
    here, before anything is written, and counted against the index; or from documents.json (format 1)."""
    logs: dict[str, Callable[[], Iterable[Any]]] = {
        kind: functools.partial(iter, entries) for kind, entries in docs.items() if kind not in KEYED_DOCUMENTS}
    for name, meta in index["files"].items():
        kind = _log_kind(name)
        if kind is None:
            continue
        path = root / name
        counted = sum(1 for _ in _log_entries(path))
        if counted != meta.get("entries"):
            raise InputFileError(f"{path} holds {counted} entries where the backup recorded {meta.get('entries')}")
        logs[kind] = functools.partial(_log_entries, path)
    return logs


def _point(row: Any, dimension: int, collection: str) -> tuple[str, dict[str, Any], np.ndarray]:
    """A point as the store will take it; a ValueError (the reader names file and line) for anything it would not,
    or would call damage when next opened (`integrity.point_problem`): an id that is no UUID or unsigned integer,
    a payload that is no object or lacks its text fields, a vector of the wrong length or not of unit length."""
    pid, payload = str(row["id"]), row["payload"]
    if not isinstance(payload, dict):
        raise InvalidInputError(f"a payload that is a JSON {type(payload).__name__}")
    if pid.isascii() and pid.isdigit():
        if int(pid) >= 2**64:
            raise InvalidInputError(f"a point id over 2**64 - 1 ({pid})")
    else:
        # In its one spelling: the load deletes every point of the store whose id it did not write, and the engine
        # gives ids back in this one (an id written in capitals was written, then deleted as a stray).
        pid = str(uuid.UUID(pid))  # a ValueError for any other id
    vector = np.frombuffer(base64.b64decode(row["vector"], validate=True), dtype="<f4").astype(np.float32)
    if vector.shape != (dimension,):
        raise InvalidInputError(f"a vector of {vector.size} numbers where the store's have {dimension}")
    if (problem := point_problem(Record(pid, payload, vector), collection)) is not None:
        raise InvalidInputError(problem)
    return pid, dict(payload), vector


def _points(path: Path, dimension: int, collection: str) -> Iterator[tuple[str, dict[str, Any], np.ndarray]]:
    return _json_lines(path, "a backed-up point", functools.partial(_point, dimension=dimension, collection=collection))


def _check_points(root: Path, index: dict[str, Any], dimension: int) -> None:
    """Every point of every collection's file read and checked (`_point`) and counted against the index, before
    anything is written: a damaged file (its checksum redone to match) found half-way through the load left a new
    store half-restored, and a forced restore paused every edit until then. 8 to 12 s for the default store's
    144,000 points (2-core AMD EPYC, 2026-12-08), of 1:20 for that whole restore."""
    for collection in COLLECTIONS:
        name = f"{collection}.jsonl.gz"
        counted = sum(1 for _ in _points(root / name, dimension, collection))
        recorded = index["files"].get(name, {}).get("points")
        if recorded is not None and counted != recorded:
            raise InputFileError(f"{root / name} holds {counted} points where the backup recorded {recorded}")


def restore(store: Store, folder: str | os.PathLike[str], *, force: bool = False) -> Manifest:
    """Load a backup into `store`: a new store, or with `force` a replacement of the existing one, built beside it
    and swapped in atomically (killed half-way, the old store still serves)."""
    try:
        root, index = read_index(folder)
    except OSError as exc:
        raise InputFileError(f"{folder}: cannot read the backup ({exc.strerror or exc})") from exc
    saved = Manifest.from_dict(index["manifest"])
    if saved.schema_version > SCHEMA_VERSION:
        raise StoreError(f"{root} was made at schema version {saved.schema_version}, newer than this knnbe-qdrant "
                         f"({SCHEMA_VERSION}): upgrade knnbe-qdrant")
    if store.exists() and not force:
        raise StoreError(f"{store.describe()} exists: `knnbe-qdrant restore --force` replaces it with the backup "
                         "(built beside it and swapped in atomically)")
    docs = _read_documents(root / "documents.json")
    logs = _logs(root, index, docs)
    _check_points(root, index, saved.dimension)
    if not store.exists():
        return _load(store, store, saved, root, docs, logs)
    # Edits wait until the swap: one made meanwhile went to the collections the swap then left behind (on a server,
    # other processes edit the store while it is restored).
    with store.edits_paused() as paused:
        return _load(store, store.rebuild_view(), saved, root, docs, logs, before_swap=paused.check)


def _load(store: Store, target: Store, saved: Manifest, root: Path, docs: dict[str, Any],
          logs: dict[str, Callable[[], Iterable[Any]]], *, before_swap: Callable[[], None] = lambda: None) -> Manifest:
    try:
        fields = {k: getattr(saved, k) for k in ("schema_version", "skill_text", "sources", "migrations", "params",
                                                 "previous", "created_at")}
        # A view left by a stopped rebuild or restore is resumed (initialize), then made exactly the backup.
        target.initialize(saved.model, saved.dimension, **fields)
        target.update_manifest(**fields, state="restoring")  # stopped half-way, it says what to run again
        for collection in COLLECTIONS:
            restored: set[str] = set()
            batch: list[tuple[str, dict[str, Any], np.ndarray]] = []
            for point in _points(root / f"{collection}.jsonl.gz", saved.dimension, collection):
                batch.append(point)
                restored.add(point[0])
                if len(batch) >= _CHUNK:
                    _write(target, collection, batch)
                    batch = []
            _write(target, collection, batch)
            stray = [r.id for r in target.scroll(collection, payload=False) if r.id not in restored]
            for start in range(0, len(stray), _CHUNK):
                target.delete(collection, stray[start : start + _CHUNK])
        _restore_documents(target, docs, logs)
        target.optimize()
        target.mark_ready(counts={c: target.count(c) for c in COLLECTIONS}, build_seconds=saved.build_seconds)
        if target is not store:
            before_swap()
            store.promote(target)
    finally:
        if target is not store:
            target.close()
    return store.manifest


def _write(store: Store, collection: str, batch: list[tuple[str, dict[str, Any], np.ndarray]]) -> None:
    if batch:
        store.upsert(collection, [p[0] for p in batch], np.stack([p[2] for p in batch]), [p[1] for p in batch])


def _read_documents(path: Path) -> dict[str, Any]:
    """The backup's documents, each kind checked before anything is written: a log's kind names a file in the
    store directory, so only the audit logs' names are taken."""
    docs = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(docs, dict):
        raise InputFileError(f"{path}: not a JSON object of documents by kind")
    for kind, value in docs.items():
        keyed = kind in KEYED_DOCUMENTS
        if not (keyed or is_document_file(f"{kind}.jsonl")) or not isinstance(value, dict if keyed else list):
            raise InputFileError(f"{path}: {kind!r} is not a document kind a backup holds (or not in its shape)")
        bad = next((i for i, e in enumerate(value) if not isinstance(e, dict)), None) if not keyed else None
        if bad is not None:
            raise InputFileError(f"{path}: entry {bad} of the log {kind!r} is not a log entry")
    return docs


def _restore_documents(store: Store, docs: dict[str, Any], logs: dict[str, Callable[[], Iterable[Any]]]) -> None:
    """The backup's keys, hiders and tombstones join the store's (a key made since the backup stays); each of its
    logs (the audit log, each tenant's) is written only into a store where that log is empty, whole or not at all
    (Documents.restore_log), so restoring twice does not repeat it and a killed restore leaves no part of one."""
    documents = store.documents()
    for kind in KEYED_DOCUMENTS:
        if docs.get(kind):
            documents.put_many(kind, docs[kind])
    for kind in sorted(logs):
        documents.restore_log(kind, logs[kind]())
