"""What an embedded store's directory holds, and what a directory must hold to be opened or built in:
<root>/manifest.json, one folder per collection and generation (<root>/skills_g1/, <root>/memory_g1/), and the
service's documents (documents.is_document_file)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from .._errors import StoreCorruptError, StoreError, StoreNotFoundError
from .._schema import Manifest
from .document_files import is_document_file
from .documents import fsync_dir

MANIFEST_FILE = "manifest.json"
NEXT_MANIFEST_FILE = "manifest.next.json"
"""The manifest of a rebuild in progress (`build --force`): it becomes MANIFEST_FILE, atomically, when the new
collections are complete; until then the old ones serve."""
STAGING_SUFFIX = ".creating"
"""A collection is created under <name>.creating and renamed into place once Edge has written it whole: Edge's own
create leaves, when killed, a folder it refuses to load (a WAL, no config), so a folder with a collection's name is
always a complete one."""
_COLLECTION_DIR = r"(skills|memory)_g(\d+)(\.creating)?"
_OWN = re.compile(_COLLECTION_DIR + r"|manifest(\.next)?\.json(\.tmp)?")


def prepare(path: Path, *, create: bool, generation: int | None) -> bool:
    """Check `path` before its shards are opened (and make it, or clear an unfinished first build, when
    creating); whether it has a manifest. Refuses a directory that holds anything but a store."""
    if not path.exists():
        if not create:
            raise StoreNotFoundError(f"no store at {path}: run `knnbe-qdrant build` to create one")
        try:
            path.mkdir(parents=True)
        except OSError as exc:  # a read-only or unknown home, a path through a file: said, not a traceback
            raise StoreError(f"cannot create the store folder {path} ({exc.strerror}): give a folder this user can "
                             "write with --store or KNNBE_STORE") from exc
    elif not path.is_dir():
        raise StoreCorruptError(f"{path} is a file, not a store directory")
    has_manifest = (path / MANIFEST_FILE).exists()
    if not has_manifest and generation is None:
        if not create:
            leftovers = [p.name for p in path.iterdir() if _OWN.fullmatch(p.name)]
            hint = (" (it holds the collections of a build that stopped before its manifest was written: run "
                    "`knnbe-qdrant build` to build it afresh)") if leftovers else ""
            raise StoreCorruptError(f"{path} is not a knnbe-qdrant store (no {MANIFEST_FILE}){hint}")
        if any(not is_document_file(p.name) and not _OWN.fullmatch(p.name) for p in path.iterdir()):
            raise StoreCorruptError(
                f"{path} is a non-empty directory that is not a knnbe-qdrant store; refusing to build there"
            )
        for stale in path.iterdir():  # an unfinished first build: nothing in it can be trusted
            if _OWN.fullmatch(stale.name):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    return has_manifest


def generations_on_disk(path: Path) -> set[int]:
    """Every generation that has a folder here, complete or still being created."""
    return {int(m.group(2)) for p in path.iterdir() if p.is_dir() and (m := re.fullmatch(_COLLECTION_DIR, p.name))}


def read_next_generation(next_file: Path) -> int | None:
    try:
        return int(Manifest.from_dict(json.loads(next_file.read_text(encoding="utf-8"))).generation)
    except (OSError, ValueError):
        return None


def collection_config(dimension: int) -> qe.EdgeConfig:
    """How every collection of an embedded store is made."""
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine),
        # Measured on the full ESCO memory (README, Performance): int8 vectors in RAM for the HNSW walk and payload
        # kept in RAM cut a kNN query by about a quarter at the same recall.
        quantization_config=qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True),
        payload_memory=qe.Memory.Cached,
        # One search thread per query: mapping sends batches, and on few cores the per-segment fan-out of a single
        # query costs more in hand-offs than it gains (measured: -20% per kNN query).
        max_search_threads=1,
    )


def _staging(final: Path) -> Path:
    return final.with_name(final.name + STAGING_SUFFIX)


def create_whole(final: Path, create: Callable[..., Any], *args: Any) -> None:
    """Have `create(folder, *args)` make a collection (it returns the open shard) under a staging name, close it, and
    rename it to `final`: killed at any moment, this leaves either no collection or a whole one."""
    staging = _staging(final)
    shutil.rmtree(staging, ignore_errors=True)  # a create killed before
    shard = create(str(staging), *args)
    try:
        shard.flush()
    finally:
        shard.close()
    os.replace(staging, final)
    fsync_dir(final.parent)


def drop_whole(final: Path) -> None:
    """Delete a collection's folder so that a kill half-way leaves a staging folder, never a collection with
    half its files: the rename comes first, and a staging folder is only ever garbage."""
    staging = _staging(final)
    shutil.rmtree(staging, ignore_errors=True)
    if final.exists():
        os.replace(final, staging)
        fsync_dir(final.parent)
    shutil.rmtree(staging, ignore_errors=True)


def clear_unfinished_segments(collection: Path) -> None:
    """Remove what an index build killed half-way left: Edge builds a segment under temp_segments/ and never removes
    one it did not finish (0.4 to 0.5 GB for each kill of `knnbe-qdrant index` on the default store, kept through
    later opens and indexings). Called with the shard loaded, whose lock keeps every other process out, and never
    while this process indexes it."""
    temp = collection / "temp_segments"
    if temp.is_dir():
        for leftover in temp.iterdir():
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
