"""Spreading `map-postings` over a Ray cluster: mapper actors do the encoding and the two queries; the driver
reads, checks and splits the postings and writes the records in input order, exactly as a single-machine run does,
so the output is identical and resuming works the same way.

Each actor opens the store itself: on a cluster, a shared Qdrant server (`--url`); with the embedded store, each
actor maps from its own copy of the store directory (Qdrant Edge allows one process per store), which suits a
local instance or nodes that share a file system.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._errors import KnnbeError
from .._mapper import SkillMapper
from ..store.connection import Connection
from .mapping import Batch, PostingSettings, map_batch


class _PostingsActor:
    def __init__(self, connection: Connection, settings: PostingSettings) -> None:
        self.copy = None
        if connection.path is not None:
            self.copy = tempfile.mkdtemp(prefix="knnbe-actor-")
            copied = shutil.copytree(connection.path, os.path.join(self.copy, "store"))
            connection = replace(connection, path=Path(copied))
        self.mapper = SkillMapper.open(connection)
        self.settings = settings

    def map(self, batch: Batch) -> list[dict]:
        return map_batch(self.mapper, batch, self.settings)

    def close(self) -> None:
        self.mapper.close()
        if self.copy:
            shutil.rmtree(self.copy, ignore_errors=True)


class RayRunner:
    """Round-robins batches over `actors` mapper actors, keeping at most two batches per actor in flight."""

    def __init__(self, address: str, actors: int, connection: Connection, settings: PostingSettings) -> None:
        try:
            import ray
        except ImportError as exc:
            raise KnnbeError("running on Ray needs the ray extra: pip install 'knnbe-qdrant[ray]'") from exc
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            if address == "local":
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        actor = ray.remote(num_cpus=1)(_PostingsActor)
        self.actors = [actor.remote(connection, settings) for _ in range(max(actors, 1))]
        self.max_in_flight = 2 * len(self.actors)
        self.next = 0

    def submit(self, batch: Batch) -> Any:
        actor = self.actors[self.next % len(self.actors)]
        self.next += 1
        return actor.map.remote(batch)

    def result(self, handle: Any) -> list[dict]:
        return self.ray.get(handle)

    def close(self) -> None:
        self.ray.get([a.close.remote() for a in self.actors])
        for a in self.actors:
            self.ray.kill(a)
        if self.started_here:
            self.ray.shutdown()
