"""Micro-batching of concurrent map requests. Encoding is CPU-bound and a batch of 64 sentences costs far less than
64 batches of one, so requests that arrive within a few milliseconds of each other are encoded in one call and
queried together (one query per collection per tenant), then answered each with its own results.

A batch that fails for any reason is done again request by request, so one request's fault (a text the tokenizer
refuses, say) fails that request alone and every other one in the batch still gets its answer. A request whose
client went away before its batch started is dropped, not computed. Requests queue per tenant and are taken
round-robin across tenants, so one tenant's flood does not hold another's request behind all of it.

Two worker threads make a pipeline: one gathers and encodes a batch (ONNX Runtime releases the GIL), the other
queries and scores the batch before it, so the encoder does not wait for the Python side of mapping. What is
gathered goes as two batches by size, one-sentence requests first (`size_lanes`). A request is never split.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import numpy as np

from .._mapper import SkillMapper
from .._results import SentenceResult
from ..encoding import Encoded

Vectors = np.ndarray | Encoded
"""What the mapper's `encode` gives: vectors, or vectors with their token states."""


@dataclass
class _Job:
    sentences: Sequence[str]
    top: int
    tenant: str | None
    future: Future[list[SentenceResult]] = field(default_factory=Future)


class _FairQueue:
    """Jobs by tenant, handed out round-robin across tenants: a tenant that queued a hundred requests delays another
    tenant's next request by one of them, not by all of them. `close` ends it once every queued job is out."""

    def __init__(self) -> None:
        self._jobs: dict[str | None, deque[_Job]] = {}
        self._turns: deque[str | None] = deque()  # tenants with queued jobs, whose turn is next first
        self._ready = threading.Condition()
        self._closed = False

    def put(self, job: _Job) -> None:
        with self._ready:
            if job.tenant not in self._jobs:
                self._jobs[job.tenant] = deque()
                self._turns.append(job.tenant)
            self._jobs[job.tenant].append(job)
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def get(self, timeout: float | None = None) -> _Job | None:
        """The next job, None once closed and empty; queue.Empty after `timeout` seconds without one."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._turns or self._closed, timeout):
                raise queue.Empty
            if not self._turns:
                return None
            tenant = self._turns.popleft()
            job = self._jobs[tenant].popleft()
            if self._jobs[tenant]:
                self._turns.append(tenant)  # its next job waits behind the other tenants' first ones
            else:
                del self._jobs[tenant]
            return job


SMALL_REQUEST = 1
"""Requests of this many sentences or fewer form a batch of their own, encoded and answered before the rest of what
was gathered with them: an interactive one-sentence lookup waits for its own small batch, not behind a hundred
sentences of other requests. The rest follow in the next batch, right after (nothing waits longer than one small
batch more), and the pipeline keeps the encoder busy meanwhile."""


def size_lanes(jobs: list[_Job]) -> list[list[_Job]]:
    """Gathered jobs as batches, small requests first (each lane keeps its arrival order); empty lanes left out."""
    small = [j for j in jobs if len(j.sentences) <= SMALL_REQUEST]
    rest = [j for j in jobs if len(j.sentences) > SMALL_REQUEST]
    return [lane for lane in (small, rest) if lane]


class MapBatcher:
    def __init__(
        self,
        mapper: SkillMapper,
        *,
        max_wait_s: float = 0.003,
        max_sentences: int = 256,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.mapper = mapper
        self.max_wait_s = max_wait_s
        self.max_sentences = max_sentences
        self.on_batch = on_batch  # (requests, sentences) of each batch, for the metrics
        self._queue = _FairQueue()
        # One encoded batch waits at most: more would only add latency, fewer would idle the encoder.
        self._encoded: queue.Queue[tuple[list[_Job], list[str], Vectors] | None] = queue.Queue(maxsize=1)
        self._threads = [threading.Thread(target=self._encode_loop, name="knnbe-encode", daemon=True),
                         threading.Thread(target=self._query_loop, name="knnbe-query", daemon=True)]
        for thread in self._threads:
            thread.start()

    def submit(self, sentences: Sequence[str], top: int, tenant: str | None) -> Future[list[SentenceResult]]:
        """Map already-validated sentences; the future holds one result per sentence, in order."""
        job = _Job(list(sentences), top, tenant)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        batch, n = [first], len(first.sentences)
        deadline = time.perf_counter() + self.max_wait_s
        while n < self.max_sentences:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
            n += len(job.sentences)
        return batch, False

    def _encode_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._encoded.put(None)
                return
            gathered, stop = self._gather(first)
            for lane in size_lanes(gathered):
                # A request cancelled while it queued (its client went away) is not computed.
                batch = [job for job in lane if job.future.set_running_or_notify_cancel()]
                texts = [s for job in batch for s in job.sentences]
                if batch and self.on_batch is not None:
                    self.on_batch(len(batch), len(texts))
                if batch:
                    encoded = self._encode(batch, texts)
                    if encoded is not None:
                        self._encoded.put(encoded)
            if stop:
                self._encoded.put(None)
                return

    def _encode(self, batch: list[_Job], texts: list[str]) -> tuple[list[_Job], list[str], Vectors] | None:
        try:
            return batch, texts, self.mapper.encode(texts)
        except Exception as exc:
            if len(batch) == 1:  # the worker lives on; the request gets the error
                batch[0].future.set_exception(exc)
                return None
        # One request's texts broke the batch: each request on its own, so only that one fails.
        kept: list[_Job] = []
        vectors: list[Vectors] = []
        for job in batch:
            try:
                vectors.append(self.mapper.encode(list(job.sentences)))
                kept.append(job)
            except Exception as exc:
                job.future.set_exception(exc)
        if not kept:
            return None
        encoded = [v for v in vectors if isinstance(v, Encoded)]
        joined = (Encoded.concat(encoded, self.mapper.encoder.dimension) if len(encoded) == len(vectors)
                  else np.concatenate([np.asarray(v) for v in vectors]))
        return kept, [s for job in kept for s in job.sentences], joined

    def _query_loop(self) -> None:
        while True:
            item = self._encoded.get()
            if item is None:
                return
            self._map(*item)

    def _map(self, batch: list[_Job], texts: list[str], vectors: Vectors) -> None:
        starts = np.cumsum([0] + [len(job.sentences) for job in batch])
        by_tenant: dict[str | None, list[int]] = {}
        for i, job in enumerate(batch):
            by_tenant.setdefault(job.tenant, []).append(i)
        for tenant, members in by_tenant.items():
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in members])
            top = max(batch[i].top for i in members)
            try:
                results = self.mapper.map_vectors([texts[r] for r in rows], vectors[rows], top=top, tenant=tenant)
            except Exception as exc:
                if len(members) == 1:
                    batch[members[0]].future.set_exception(exc)
                    continue
                for i in members:  # each request on its own: only the one at fault fails
                    own = np.arange(starts[i], starts[i + 1])
                    try:
                        one = self.mapper.map_vectors([texts[r] for r in own], vectors[own], top=batch[i].top,
                                                      tenant=tenant)
                    except Exception as exc_i:
                        batch[i].future.set_exception(exc_i)
                    else:
                        batch[i].future.set_result(one)
                continue
            at = 0
            for i in members:
                job = batch[i]
                mine = results[at : at + len(job.sentences)]
                at += len(job.sentences)
                job.future.set_result([replace(r, skills=r.skills[: job.top]) for r in mine])
