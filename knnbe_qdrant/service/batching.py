"""Micro-batching of concurrent map requests. Encoding is CPU-bound and a batch of 64 sentences costs far less than
64 batches of one, so requests that arrive within a few milliseconds of each other are encoded in one call and
queried together (one query per collection per tenant), then answered each with its own results.

A batch that fails for any reason is done again request by request, so one request's fault (a text the tokenizer
refuses, say) fails that request alone and every other one in the batch still gets its answer. A request whose
client went away before its batch started is dropped, not computed. Requests queue per tenant and are taken
round-robin across tenants, so one tenant's flood does not hold another's request behind all of it.

Worker threads (the service runs two by default, `worker_shape`) each encode and map, pass after pass, from the same
queues: while one maps a pass (Python and the engine's searches, one core), the other encodes the next (ONNX
Runtime, which releases Python's lock), each encoder call on its share of the cores. Requests queue in two lanes by
size, and passes alternate between them (`_Lanes`). A pass of larger requests is encoded in chunks of PREEMPT_CHUNK
sentences, and between chunks the one-sentence requests that came meanwhile are encoded, mapped and answered: an
interactive lookup waits for one chunk of a big pass, not the whole of it, so big passes can be large (LARGE_PASS),
which is what makes them cheap per sentence. A request is never split across passes (its sentences are mapped
together).

Why whole workers and not a pipeline (one thread encoding the next pass while another maps the last, as until
2026-12-06): the pipeline's encoder kept two threads, which already fill two cores, so the mapping thread only
slowed them down, and its stages handed passes over in order. Alternating runs of the batcher alone, 16 closed-loop
clients, 2-core AMD EPYC, 2026-12-06: the pipeline with passes of 16 gave 0.51-0.61x the library at a one-sentence
p95 of 393-426 ms; one worker with chunks of 4 and passes of 64 gave 0.78-0.83x at 107-116 ms. On 2026-12-07
(night), the same batcher alone, four alternating runs of 15 s: two workers on one encoder thread each 66.2 / 57.9 /
65.3 / 72.1 sentences/s against one worker on two threads 54.9 / 45.3 / 49.3 / 59.6 (docs/service.md).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import numpy as np

from .._errors import InvalidInputError
from .._mapper import SkillMapper
from .._results import SentenceResult
from ..encoding import Encoded

Vectors = np.ndarray | Encoded
"""What the mapper's `encode` gives: vectors, or vectors with their token states."""


def _concat(parts: Sequence[Vectors], dimension: int) -> Vectors:
    encoded = [p for p in parts if isinstance(p, Encoded)]
    return (Encoded.concat(encoded, dimension) if len(encoded) == len(parts)
            else np.concatenate([np.asarray(p) for p in parts]))


@dataclass
class _Job:
    sentences: Sequence[str]
    top: int
    tenant: str | None
    future: Future[list[SentenceResult]] = field(default_factory=Future)


_Encoded = tuple[list[_Job], list[str], Vectors]
"""Requests with their sentences in order and those sentences' vectors."""


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
LARGE_PASS = 64
"""The most sentences of larger requests mapped in one pass (a request is never split: a bigger one is a pass of
its own). Larger passes map more cheaply per sentence; with preemption (PREEMPT_CHUNK) their size no longer sets a
small request's wait. 16 clients in requests of 1 to 5 sentences keep about 48 in flight, so 64 takes what waits."""
PREEMPT_CHUNK = 4
"""Sentences per encoder call in a larger pass; between two such calls the waiting one-sentence requests go first.
Measured on 2 cores (batcher alone, alternating, 2026-12-06): a one-sentence p95 of 107-116 ms with chunks of 4,
148 with 8, 216-284 with 16, throughput the same within the machine's noise. Sorted by length, chunks of 2 to 48
cost 6.9-7.6 ms per sentence to encode (best of seven), so small chunks cost little."""
PREEMPT_CHARS = 1024
"""And at most this many characters (one sentence at least): four of the longest sentences (the encoder reads 256
tokens of each) took 210-330 ms to encode, the wait they set for a one-sentence request. SkillSkape's sentences have
202 characters at the median and 276 at the 90th percentile: in passes of 16 of its dev sentences drawn at random,
81% of the sentences are still in chunks of four, 14% in chunks of three."""


class _Lanes:
    """Two fair queues, one per size class, under one lock. Passes alternate while both lanes wait: all the small
    requests (up to `max_small` sentences), then larger requests up to LARGE_PASS sentences, then the small ones
    that came meanwhile... so a small request waits for at most one chunk of a larger pass (`take_small`, between
    chunks), and a larger request for at most one small pass per pass or chunk ahead of it: neither lane starves.
    `close` ends it once every queued job is out."""

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

    def take_small(self, max_sentences: int) -> list[_Job]:
        """The one-sentence requests waiting now (up to `max_sentences`), without waiting for more: what goes between
        two chunks of a larger pass."""
        with self._ready:
            batch: list[_Job] = []
            n = 0
            while self._small and n < max_sentences:
                batch.append(self._small.pop())
                n += len(batch[-1].sentences)
            return batch

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


def _chunks(lengths: Sequence[int], most: int, chars: int | None) -> Iterator[tuple[int, int]]:
    """(start, end) of consecutive chunks of at most `most` texts and `chars` characters, one text at least each."""
    start = 0
    while start < len(lengths):
        end, total = start + 1, lengths[start]
        while end < len(lengths) and end - start < most and (chars is None or total + lengths[end] <= chars):
            total += lengths[end]
            end += 1
        yield start, end
        start = end


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system says, else every CPU)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def worker_shape(workers: int | None = None, cpus: int | None = None) -> tuple[int, int]:
    """(map workers, encoder threads per call): by default two workers where there are two CPUs or more, each
    encoder call on its share of them, so that the workers' encoder calls together use every core once."""
    if workers is not None and workers < 1:
        raise InvalidInputError(f"map workers must be >= 1, got {workers}")
    cpus = cpus or usable_cpus()
    workers = workers if workers is not None else 2 if cpus >= 2 else 1
    return workers, max(1, cpus // workers)


class MapBatcher:
    def __init__(
        self,
        mapper: SkillMapper,
        *,
        max_wait_s: float = 0.003,
        max_sentences: int = 256,
        large_pass: int = LARGE_PASS,
        chunk: int = PREEMPT_CHUNK,
        workers: int = 1,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        if workers < 1:
            raise InvalidInputError(f"workers must be >= 1, got {workers}")
        self.mapper = mapper
        self.max_wait_s = max_wait_s
        self.max_sentences = max_sentences
        self.large_pass = min(large_pass, max_sentences)
        self.chunk = chunk
        self.on_batch = on_batch  # (requests, sentences) of each batch, for the metrics
        self._lanes = _Lanes()
        self._threads = [threading.Thread(target=self._loop, name=f"knnbe-map-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        return len(self._threads)

    def submit(self, sentences: Sequence[str], top: int, tenant: str | None) -> Future[list[SentenceResult]]:
        """Map already-validated sentences; the future holds one result per sentence, in order."""
        job = _Job(list(sentences), top, tenant)
        self._lanes.put(job)
        return job.future

    def close(self) -> None:
        """Every queued request is answered, then the workers end (10 s at most each)."""
        self._lanes.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _loop(self) -> None:
        while (taken := self._lanes.take(self.max_sentences, self.large_pass, self.max_wait_s)) is not None:
            self._pass(taken, preemptible=True)

    def _pass(self, taken: list[_Job], preemptible: bool) -> None:
        try:
            self._run(taken, preemptible)
        except BaseException as exc:
            # A fault of the batcher's own (not one request's: those are caught where they happen). This pass's
            # requests fail, none is left waiting, and the worker, or the larger pass this one interrupted, goes on.
            for job in taken:
                if not job.future.done():
                    job.future.set_exception(exc)

    def _run(self, taken: list[_Job], preemptible: bool) -> None:
        """A pass, tenant by tenant: the tenants with the fewest sentences first, each encoded, mapped and answered
        before the next, so that another tenant's flood in the same pass holds a lone request for a chunk, not for
        the whole pass (64 long one-sentence requests of one tenant held another's for up to 17.5 s on the default
        store: 2026-12-07)."""
        # A request cancelled while it queued (its client went away) is not computed.
        batch = [job for job in taken if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        if self.on_batch is not None:
            self.on_batch(len(batch), sum(len(job.sentences) for job in batch))
        by_tenant: dict[str | None, list[_Job]] = {}
        for job in batch:
            by_tenant.setdefault(job.tenant, []).append(job)
        groups = sorted(by_tenant.values(), key=lambda jobs: sum(len(job.sentences) for job in jobs))
        for g, jobs in enumerate(groups):
            if (encoded := self._encode(jobs, preemptible, last=g == len(groups) - 1)) is not None:
                self._map(*encoded)

    def _encode(self, jobs: list[_Job], preemptible: bool, *, last: bool) -> _Encoded | None:
        """One tenant's requests of a pass, encoded shortest texts first (so each encoder call pads little). In a
        preemptible pass, in chunks of `self.chunk`, with the one-sentence requests that came meanwhile served
        between chunks (a chunk of them at a time). A failure sends the requests one by one (`_encode_each`), so
        that only the request at fault fails."""
        texts = [s for job in jobs for s in job.sentences]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks: list[Vectors] = []
        for start, end in _chunks([len(texts[i]) for i in order], self.chunk if preemptible else len(texts),
                                  PREEMPT_CHARS if preemptible else None):
            try:
                chunks.append(self.mapper.encode([texts[i] for i in order[start:end]]))
            except Exception as exc:
                if len(jobs) == 1:  # the worker lives on; the request gets the error
                    jobs[0].future.set_exception(exc)
                    return None
                return self._encode_each(jobs)
            more = not last or end < len(order)
            if preemptible and more and (small := self._lanes.take_small(self.chunk)):
                self._pass(small, preemptible=False)
        back = np.empty(len(order), dtype=np.int64)
        back[order] = np.arange(len(order))
        return jobs, texts, _concat(chunks, self.mapper.encoder.dimension)[back]

    def _encode_each(self, jobs: list[_Job]) -> _Encoded | None:
        """One request's texts broke the encoder call: each request on its own, so only that one fails."""
        kept: list[_Job] = []
        vectors: list[Vectors] = []
        for job in jobs:
            try:
                vectors.append(self.mapper.encode(list(job.sentences)))
                kept.append(job)
            except Exception as exc:
                job.future.set_exception(exc)
        if not kept:
            return None
        return kept, [s for job in kept for s in job.sentences], _concat(vectors, self.mapper.encoder.dimension)

    def _map(self, jobs: list[_Job], texts: list[str], vectors: Vectors) -> None:
        """One tenant's requests: one mapping of all their sentences, answered each with its own results."""
        tenant = jobs[0].tenant
        try:
            results = self.mapper.map_vectors(texts, vectors, top=max(job.top for job in jobs), tenant=tenant)
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            starts = np.cumsum([0] + [len(job.sentences) for job in jobs])
            for i, job in enumerate(jobs):  # each request on its own: only the one at fault fails
                own = np.arange(starts[i], starts[i + 1])
                try:
                    one = self.mapper.map_vectors([texts[r] for r in own], vectors[own], top=job.top, tenant=tenant)
                except Exception as exc_i:
                    job.future.set_exception(exc_i)
                else:
                    job.future.set_result(one)
            return
        at = 0
        for job in jobs:
            mine = results[at : at + len(job.sentences)]
            at += len(job.sentences)
            job.future.set_result([replace(r, skills=r.skills[: job.top]) for r in mine])
