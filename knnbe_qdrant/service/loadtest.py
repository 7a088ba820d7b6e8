"""`knnbe-qdrant loadtest`: a bounded load test of the service on loopback.

It measures the library alone (the same sentences through `SkillMapper.map`, batches of 256, caches warm) before
and after the load, for the baseline, and starts `knnbe-qdrant serve` as a child process on a free loopback port,
creates a scratch tenant with a curator key and a reader key, and runs N concurrent clients for a fixed time: by
default 95% map requests of 1-5 SkillSkape dev sentences and 5% curator writes (a new sentence each). Afterwards
every acknowledged write is read back (a write that said it succeeded and is not there is a lost write), the
scratch tenant is deleted and its keys revoked, and the server stops. Traffic goes to 127.0.0.1 only, and the loop
ends by itself.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import IO, Any

import httpx

from .._data import skillskape_sentences
from .._errors import KnnbeError
from ..evaluation.bench import Targets
from ..evaluation.bench import format_table as format_measures
from ..store.connection import Connection
from .batching import worker_shape
from .keys import KeyRing

WRITE_SKILL = "http://data.europa.eu/esco/skill/ccd0a1d9-afda-43d9-b901-96344886e14d"  # Python (programming)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def library_baseline(connection: Connection, sentences: list[str]) -> float:
    """Sentences/s of SkillMapper.map alone on these sentences, warm as `bench` measures it: one untimed pass over
    them first fills the caches (memory payloads, skill vectors) that the service has filled a few seconds into
    its run. Measured cold, the library ran 239 sentences/s against 310-335 warm (2 cores, 2026-12-03), which made
    the service look closer to it than it is."""
    from .._mapper import SkillMapper

    with SkillMapper.open(connection) as mapper:

        def map_all() -> None:
            for start in range(0, len(sentences), 256):
                mapper.map(sentences[start : start + 256])

        map_all()
        started = time.perf_counter()
        map_all()
        return len(sentences) / (time.perf_counter() - started)


def _start_server(connection: Connection, port: int, log: IO[bytes],
                  map_workers: int | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QDRANT_", "KNNBE_"))}
    cmd = [sys.executable, "-m", "knnbe_qdrant", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", *(["--map-workers", str(map_workers)] if map_workers else [])]
    # The log goes to a file, not a pipe: a pipe nobody reads would block the server once full.
    return subprocess.Popen(cmd, env={**env, **connection.environment()}, stdout=subprocess.DEVNULL, stderr=log)


def _wait_ready(base: str, server: subprocess.Popen[bytes], log: IO[bytes], timeout: float = 120.0) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if server.poll() is not None:
            log.seek(0)
            err = log.read().decode(errors="replace")[-2000:]
            raise KnnbeError(f"the service exited ({server.returncode}): {err}")
        try:
            r = httpx.get(f"{base}/readyz", timeout=1.0)
            if r.status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise KnnbeError(f"the service was not ready after {timeout} s")


async def _load(base: str, reader: str, curator: str, sentences: list[str], clients: int, seconds: float,
                write_share: float, seed: int) -> dict[str, Any]:
    stop_at = time.perf_counter() + seconds
    latencies: list[tuple[int, float]] = []
    errors: list[str] = []
    written: list[str] = []
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(i: int) -> None:
        local = random.Random(rng.random())
        async with httpx.AsyncClient(base_url=base, timeout=30.0, limits=limits) as http:
            while time.perf_counter() < stop_at:
                if local.random() < write_share:
                    text = f"loadtest write {uuid.uuid4().hex}: maintaining Python services"
                    r = await http.post("/v1/memory", json={"skill": WRITE_SKILL, "text": text},
                                        headers={"Authorization": f"Bearer {curator}"})
                    if r.status_code == 201:
                        written.append(text)
                    else:
                        errors.append(f"write {r.status_code}: {r.text[:200]}")
                    continue
                n = local.randint(1, 5)
                batch = local.sample(sentences, n)
                started = time.perf_counter()
                r = await http.post("/v1/map", json={"sentences": batch, "top": 10},
                                    headers={"Authorization": f"Bearer {reader}"})
                elapsed = time.perf_counter() - started
                if r.status_code == 200 and len(r.json()["results"]) == n:
                    latencies.append((n, elapsed))
                else:
                    errors.append(f"map {r.status_code}: {r.text[:200]}")

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return {"elapsed": time.perf_counter() - started, "latencies": latencies, "errors": errors, "written": written}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


def run_loadtest(connection: Connection, *, clients: int = 16, seconds: float = 60.0, write_share: float = 0.05,
                 baseline: bool = True, seed: int = 0, map_workers: int | None = None) -> dict[str, Any]:
    sentences = [text for text, _ in skillskape_sentences("dev")]
    # Before and after the load: a shared machine's speed drifts by a fifth within minutes (2-core EPYC, 2026-12-06:
    # one 512-sentence baseline read 95 to 146 sentences/s between runs), and the ratio should not hang on one read.
    before = library_baseline(connection, sentences[:512]) if baseline else None
    tenant = f"loadtest-{uuid.uuid4().hex[:8]}"
    documents = connection.documents()
    ring = KeyRing(documents)
    names = []
    try:
        reader_key, reader = ring.create(role="reader", tenant=tenant)
        curator_key, curator = ring.create(role="curator", tenant=tenant)
        admin_key, admin = ring.create(role="admin")
        names = [reader_key.name, curator_key.name, admin_key.name]
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in the finally below, after the server stops)
        server = _start_server(connection, port, log, map_workers)
        try:
            ready_s = _wait_ready(base, server, log)
            cpu_before = resource.getrusage(resource.RUSAGE_SELF)
            out = asyncio.run(_load(base, reader, curator, sentences, clients, seconds, write_share, seed))
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            client_cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
            # Every acknowledged write must be there, exactly once.
            r = httpx.get(f"{base}/v1/memory", params={"skill": WRITE_SKILL, "own": "true", "limit": 10_000},
                          headers={"Authorization": f"Bearer {curator}"}, timeout=60)
            stored = {p["text"] for p in r.json()["items"]} if r.status_code == 200 else set()
            lost = [t for t in out["written"] if t not in stored]
            metrics = httpx.get(f"{base}/metrics", timeout=10).text
            httpx.delete(f"{base}/v1/tenants/{tenant}", headers={"Authorization": f"Bearer {admin}"}, timeout=60)
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
    finally:
        for name in names:
            ring.revoke(name)
        documents.close()
    after = library_baseline(connection, sentences[:512]) if baseline else None
    library = round((before + after) / 2, 1) if before is not None and after is not None else None
    lat = out["latencies"]
    single = [t for n, t in lat if n == 1]
    n_sentences = sum(n for n, _ in lat)
    batches = _metric(metrics, "knnbe_map_batch_sentences_count")
    return {
        "machine": f"{os.uname().machine}, {os.cpu_count()} CPUs",
        "clients": clients,
        "map_workers": "{} x {} encoder thread(s)".format(*worker_shape(map_workers)),
        "seconds": round(out["elapsed"], 1),
        "start_to_ready_s": round(ready_s, 2),
        "map_requests": len(lat),
        "writes": len(out["written"]),
        "requests_per_s": round((len(lat) + len(out["written"])) / out["elapsed"], 1),
        "sentences_per_s": round(n_sentences / out["elapsed"], 1),
        "library_sentences_per_s": library,
        "library_before_after": f"{before:.1f} / {after:.1f}" if before is not None and after is not None else None,
        "service_vs_library": round(n_sentences / out["elapsed"] / library, 3) if library else None,
        "latency_p50_ms": round(1000 * _percentile([t for _, t in lat], 0.50), 1),
        "latency_p95_ms": round(1000 * _percentile([t for _, t in lat], 0.95), 1),
        "latency_p99_ms": round(1000 * _percentile([t for _, t in lat], 0.99), 1),
        "one_sentence_p95_ms": round(1000 * _percentile(single, 0.95), 1),
        # by size class: whether small requests wait behind large ones, and whether large ones starve
        "two_to_three_sentence_p95_ms": round(1000 * _percentile([t for n, t in lat if 2 <= n <= 3], 0.95), 1),
        "four_to_five_sentence_p95_ms": round(1000 * _percentile([t for n, t in lat if 4 <= n <= 5], 0.95), 1),
        "mean_sentences_per_batch": round(_metric(metrics, "knnbe_map_batch_sentences_sum") / batches, 1)
        if math.isfinite(batches) and batches else None,
        "load_generator_cpu_share": round(client_cpu / (out["elapsed"] * (os.cpu_count() or 1)), 3),
        "errors": len(out["errors"]),
        "lost_writes": len(lost),
        "first_errors": out["errors"][:3],
        "median_request_sentences": statistics.median([n for n, _ in lat]) if lat else None,
    }


TARGETS: Targets = {
    "service_vs_library": ("≥ 0.8", lambda v: v is not None and v >= 0.8),
    "one_sentence_p95_ms": ("≤ 200", lambda v: v <= 200),
    "start_to_ready_s": ("< 5", lambda v: v < 5),
    "errors": ("0", lambda v: v == 0),
    "lost_writes": ("0", lambda v: v == 0),
}


def format_table(report: dict[str, Any]) -> str:
    return format_measures(report, TARGETS)
