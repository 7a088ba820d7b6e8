"""Micro-batching of concurrent map requests. Encoding is CPU-bound and a batch of 64 sentences costs far less than
64 batches of one, so requests that arrive within a few milliseconds of each other are encoded in one call and
queried together (one query per collection per tenant), then answered each with its own results.

A batch that fails for any reason is done again request by request, so one request's fault (a text the tokenizer
refuses, say) fails that request alone and every other one in the batch still gets its answer. A request whose
client went away before its batch started is dropped, not computed. Requests queue per tenant and are taken
round-robin across tenants, so one tenant's flood does not hold another's request behind all of it.

Two worker threads make a pipeline: one gathers and encodes a batch (ONNX Runtime releases the GIL), the other
queries and scores the batch before it, so the encoder does not wait for the Python side of mapping. Requests
queue in two lanes by size, and passes alternate between them (`_Lanes`): under load a one-sentence request waits
for one bounded pass of larger requests, not for everything gathered before it. A request is never split.
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
    tenant's next request by one of them, not by all of them. Not locked: `_Lanes` holds the lock."""

    def __init__(self) -> None:
        self._jobs: dict[str | None, deque[_Job]] = {}
        self._turns: deque[str | None] = deque()  # tenants with queued jobs, whose turn is next first

    def __bool__(self) -> bool:
        return bool(self._turns)

    def put(self, job: _Job) -> None:
        if job.tenant not in self._jobs:
            self._jobs[job.tenant] = deque()
            self._turns.append(job.tenant)
        self._jobs[job.tenant].append(job)

    def pop(self) -> _Job:
        tenant = self._turns.popleft()
        job = self._jobs[tenant].popleft()
        if self._jobs[tenant]:
            self._turns.append(tenant)  # its next job waits behind the other tenants' first ones
        else:
            del self._jobs[tenant]
        return job


SMALL_REQUEST = 1
"""Requests of this many sentences or fewer go in the small lane: an interactive one-sentence lookup waits for at
most one pass of larger requests, not behind everything queued."""
LARGE_PASS = 16
"""The most sentences of larger requests encoded and mapped in one pass (a request is never split: a bigger one is
a pass of its own). Smaller passes bound a small request's wait; larger ones encode more efficiently. `loadtest`,
16 clients, 2 cores (Xeon with AMX, 2026-12-03, night, alternating, two runs each): 8 gave 222-237 sentences/s at a
1-sentence p95 of 76-78 ms, 16 gave 253-259 at 107-113 ms, 24 gave 272-278 at 129-132 ms. 16, because in a slower
hour the same evening 24 reached 180-194 ms against the 200 ms bound, and 16 145-177."""


class _Lanes:
    """Two fair queues, one per size class, under one lock. Passes alternate while both lanes wait: all the small
    requests (up to `max_small` sentences), then larger requests up to LARGE_PASS sentences, then the small ones
    that came meanwhile... so a small request waits at most one larger pass, and a larger request at most one small
    pass per pass ahead of it: neither lane starves. `close` ends it once every queued job is out."""

    def __init__(self) -> None:
        self._small = _FairQueue()
        self._large = _FairQueue()
        self._ready = threading.Condition()
        self._closed = False
        self._small_next = True

    def put(self, job: _Job) -> None:
        with self._ready:
            (self._small if len(job.sentences) <= SMALL_REQUEST else self._large).put(job)
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def take(self, max_small: int, max_large: int = LARGE_PASS, wait_s: float = 0.0) -> list[_Job] | None:
        """The next pass, gathered for up to `wait_s` after its first job (what arrives within a few milliseconds
        shares the encoder call); None once closed and empty."""
        with self._ready:
            self._ready.wait_for(lambda: self._small or self._large or self._closed)
            if not (self._small or self._large):
                return None
            small = bool(self._small) and (self._small_next or not self._large)
            lane, limit = (self._small, max_small) if small else (self._large, max_large)
            self._small_next = not small
            batch = [lane.pop()]
            n = len(batch[0].sentences)
            deadline = time.perf_counter() + wait_s
            while n < limit:
                # Wait out the gathering window for this lane (closing ends it); then take what came, if anything.
                remaining = deadline - time.perf_counter()
                if not lane and (remaining <= 0 or not self._ready.wait_for(lambda: bool(lane) or self._closed,
                                                                            remaining) or not lane):
                    break
                batch.append(lane.pop())
                n += len(batch[-1].sentences)
            return batch


class MapBatcher:
    def __init__(
        self,
        mapper: SkillMapper,
        *,
        max_wait_s: float = 0.003,
        max_sentences: int = 256,
        large_pass: int = LARGE_PASS,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.mapper = mapper
        self.max_wait_s = max_wait_s
        self.max_sentences = max_sentences
        self.large_pass = min(large_pass, max_sentences)
        self.on_batch = on_batch  # (requests, sentences) of each batch, for the metrics
        self._lanes = _Lanes()
        # One encoded batch waits at most: more would only add latency, fewer would idle the encoder.
        self._encoded: queue.Queue[tuple[list[_Job], list[str], Vectors] | None] = queue.Queue(maxsize=1)
        self._threads = [threading.Thread(target=self._encode_loop, name="knnbe-encode", daemon=True),
                         threading.Thread(target=self._query_loop, name="knnbe-query", daemon=True)]
        for thread in self._threads:
            thread.start()

    def submit(self, sentences: Sequence[str], top: int, tenant: str | None) -> Future[list[SentenceResult]]:
        """Map already-validated sentences; the future holds one result per sentence, in order."""
        job = _Job(list(sentences), top, tenant)
        self._lanes.put(job)
        return job.future

    def close(self) -> None:
        self._lanes.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _encode_loop(self) -> None:
        while True:
            taken = self._lanes.take(self.max_sentences, self.large_pass, self.max_wait_s)
            if taken is None:
                self._encoded.put(None)
                return
            # A request cancelled while it queued (its client went away) is not computed.
            batch = [job for job in taken if job.future.set_running_or_notify_cancel()]
            texts = [s for job in batch for s in job.sentences]
            if batch and self.on_batch is not None:
                self.on_batch(len(batch), len(texts))
            if batch:
                encoded = self._encode(batch, texts)
                if encoded is not None:
                    self._encoded.put(encoded)

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
