"""numpy's BLAS on one thread in the processes this package runs itself (its command line, its service).

OpenBLAS keeps worker threads that spin for a while after each call. Mapping makes many small matrix products (the
kNN-only skills' cosines, token attention), so its workers spin most of the time and take a core from the encoder's
threads and the Edge searches. Measured on 2 cores (Xeon with AMX, 2026-12-03, runs alternating with the code
before): `loadtest` 112 -> 171 sentences/s with one-sentence p95 180 -> 113 ms; `bench` moved inside its noise.
A process that embeds the library sets this itself, in its main thread (`threadpoolctl.threadpool_limits(1,
"blas")`, or OPENBLAS_NUM_THREADS=1), as docs/performance.md says.
"""

from __future__ import annotations

import os

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Set by whoever starts the process: their choice stands."""


def single_blas_thread() -> None:
    """numpy's BLAS on the calling thread alone, unless the environment chose a thread count. Call it from the main
    thread: OpenBLAS ignores the setting from any other (measured: a worker thread's call left 2 threads)."""
    if any(name in os.environ for name in THREAD_VARIABLES):
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
