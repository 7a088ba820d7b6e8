"""Settings of the processes this package runs itself (its command line, its service): `own_process` makes them.

numpy's BLAS on one thread. OpenBLAS keeps worker threads that spin for a while after each call. Mapping makes
many small matrix products (the kNN-only skills' cosines, token attention), so its workers spin most of the time
and take a core from the encoder's threads and the Edge searches. Measured on 2 cores (Xeon with AMX, 2026-12-03,
runs alternating with the code before): `loadtest` 112 -> 171 sentences/s with one-sentence p95 180 -> 113 ms;
`bench` moved inside its noise.

Fewer garbage-collector passes. Mapping a batch of 256 sentences makes tens of thousands of short-lived objects
(hits, evidence, result objects) that live until the batch returns. At Python's default threshold (a young pass
every 700 allocations) that was 77 young passes, 7 middle ones and a full one every other batch (measured,
2026-12-03, SkillSkape dev); at 10,000, 3.5 young passes and no full one. On 2 cores the collector took 0.11 ms of
mapping's 1.08 ms per sentence after encoding, and 0.04 ms at 10,000. Reference cycles are rare here, so little
waits longer to be freed.

A process that embeds the library makes these choices itself, from its main thread (docs/performance.md).
"""

from __future__ import annotations

import gc
import os

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Set by whoever starts the process: their choice stands."""
YOUNG_THRESHOLD = 10_000
"""Allocations between young-generation passes (Python's default: 700), unless the process already raised it."""


def own_process() -> None:
    """The settings above, for a process the package runs. Call it from the main thread (see single_blas_thread)."""
    single_blas_thread()
    fewer_collections()


def single_blas_thread() -> None:
    """numpy's BLAS on the calling thread alone, unless the environment chose a thread count. Call it from the main
    thread: OpenBLAS ignores the setting from any other (measured: a worker thread's call left 2 threads)."""
    if any(name in os.environ for name in THREAD_VARIABLES):
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def fewer_collections() -> None:
    """A young-generation pass every YOUNG_THRESHOLD allocations, the older generations' ratios left as they are; a
    higher threshold someone set (or the collector turned off) stands."""
    young, *older = gc.get_threshold()
    if young and young < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, *older)
