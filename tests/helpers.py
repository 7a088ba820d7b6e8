"""What several test modules share: the backends under test, stores built from a small real slice of ESCO, and
running the command line as a user does (a real process)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np

from knnbe_qdrant import ConflictError, EdgeStore, NotFoundError, QdrantClientStore, build_store, default_memory

# Skills the tests' sentences are about, so the slice is small (fast) yet the answers are meaningful.
ANCHOR_LABELS = {
    "Python (computer programming)", "SQL", "PostgreSQL", "JavaScript", "Java (computer programming)",
    "manage staff", "implement nursing care", "plan nursing care", "lead a team", "communicate with customers",
    "English", "German", "develop software prototype", "use databases", "cook meat dishes", "cook fish", "clean rooms",
}


BACKENDS = ["embedded", "qdrant-local"] + (["qdrant"] if os.environ.get("QDRANT_URL") else [])
"""Every backend the shared suites run on; a real server joins when QDRANT_URL is set."""

SERVER_STORES: list[QdrantClientStore] = []
"""Stores made on a real server during the session; conftest drops them at the end."""


def make_store(backend: str, path) -> EdgeStore | QdrantClientStore:
    if backend == "embedded":
        return EdgeStore(path, create=True)
    if backend == "qdrant-local":
        return QdrantClientStore.connect(path=":memory:", prefix="test_")
    if backend == "qdrant":
        # The same suites against a real server: QDRANT_URL=http://localhost:6333 QDRANT_API_KEY=... scripts/test.sh
        # Each store gets its own prefix, so tests never touch anything else on that server; all are dropped at the
        # end of the session.
        store = QdrantClientStore.connect(os.environ["QDRANT_URL"], api_key=os.environ.get("QDRANT_API_KEY"),
                                          prefix=f"knnbe_test_{os.getpid()}_{len(SERVER_STORES)}_")
        SERVER_STORES.append(store)
        return store
    raise ValueError(backend)


class _Remembering:
    """The real encoder, whose vectors for a text are computed once per test process: the small stores are built
    some thirty times a session from the same 3,143 sentences, and encoding them took 14 of each build's 15.5 s."""

    _seen: ClassVar[dict[tuple[str, str, str], np.ndarray]] = {}

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self.name, self.dimension = encoder.name, encoder.dimension

    def encode(self, texts, *args, **kwargs) -> np.ndarray:
        keys = [(self.encoder.name, self.encoder.precision, t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._seen))
        if missing:
            vectors = self.encoder.encode([k[2] for k in missing], *args, **kwargs)
            self._seen.update(zip(missing, vectors))
        return np.stack([self._seen[k] for k in keys]) if keys else self.encoder.encode(texts, *args, **kwargs)


def build_small(backend: str, directory, encoder, skills, memory=None):
    """A store on `backend` in `directory`, built from these real skills and (by default) their default memory."""
    store = make_store(backend, directory / "store")
    build_store(store, _Remembering(encoder), skills=skills,
                memory=default_memory(skills) if memory is None else memory, progress=False)
    return store



SMALL_BUILD = ["--memory-sources", "esco_alt_labels,esco_descriptions", "--no-progress"]


def add_unindexed(path: Path, n: int = 7000) -> int:
    """Add `n` memory points of tenant acme to the embedded store at `path` (random unit vectors, under one of its
    skills), as a curator's large import leaves them: past Qdrant's indexing threshold (10,000 KB, ~6,500 of 384
    dimensions), unindexed until something indexes them. Returns the store's unindexed points after."""
    from knnbe_qdrant._schema import MEMORY, SKILLS, memory_point_id

    with EdgeStore(path) as store:
        skill = next(iter(store.scroll(SKILLS, batch=1))).payload["skill_id"]
        vectors = np.random.default_rng(0).normal(size=(n, store.manifest.dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        texts = [f"Unindexed sentence number {i}" for i in range(n)]
        store.upsert(MEMORY, [memory_point_id("acme", skill, t) for t in texts], vectors,
                     [{"tenant": "acme", "skill_id": skill, "text": t, "source": "test"} for t in texts])
        return store.unindexed()


def run(*args, store: Path | None = None, stdin: bytes | None = None, env: dict | None = None):
    cmd = [sys.executable, "-m", "knnbe_qdrant", *map(str, args)]
    full_env = {**os.environ, **(env or {})}
    full_env.pop("QDRANT_URL", None)
    if store is not None:
        full_env["KNNBE_STORE"] = str(store)
    return subprocess.run(cmd, input=stdin if stdin is not None else b"", capture_output=True, env=full_env,
                          check=False)


def start_service(store: Path, port: int, log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`knnbe-qdrant serve` on the store as a real process on loopback, its stderr into `log`; returns it once
    /readyz answers (60 s at most)."""
    import time

    import httpx

    env = {k: v for k, v in os.environ.items() if not k.startswith(("QDRANT_", "KNNBE_"))}
    env["KNNBE_STORE"] = str(store)
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "knnbe_qdrant", "serve", "--port", str(port), *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    base = f"{'https' if '--ssl-certfile' in args else 'http'}://127.0.0.1:{port}"
    started = time.perf_counter()
    while time.perf_counter() - started < 60:
        assert proc.poll() is None, log.read_text()
        try:  # readiness only: a test that serves TLS checks the certificate itself
            if httpx.get(f"{base}/readyz", timeout=1, verify=False).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"not ready within 60 s: {log.read_text()}")


def one_clear_line(r, *words: str) -> str:
    """The one line a failed command prints: `error: ...`, no traceback, holding each of `words`."""
    err = r.stderr.decode()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def kill_a_rebuild_after(store: Path, taxonomy: Path, seconds: float) -> None:
    """Start `build --force` of the small taxonomy on the store and SIGKILL it after `seconds`."""
    kill_a_command_after(store, seconds, "build", "--force", "--taxonomy", taxonomy, *SMALL_BUILD)


def kill_a_command_after(store: Path, seconds: float, *args) -> None:
    """Start `knnbe-qdrant --store STORE ARGS...` and SIGKILL it after `seconds` (no clean-up runs)."""
    import signal
    import time

    cmd = [sys.executable, "-m", "knnbe_qdrant", "--store", str(store), *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


PYTHON_ID = "http://data.europa.eu/esco/skill/ccd0a1d9-afda-43d9-b901-96344886e14d"  # ESCO's "Python" skill
SQL = "Experience writing SQL queries against relational databases"


def race(n: int, fn):
    """fn(0) ... fn(n - 1) on n threads released at once; each one's result, or the ConflictError or NotFoundError
    it raised (what a refused racer gets)."""
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait()
        try:
            return fn(i)
        except (ConflictError, NotFoundError) as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


@contextmanager
def small_service(backend: str, directory, encoder, skills, memory, keys, limits, **client_options):
    """The service over a store built from the small slice (an exact mapper), with keys (name, role, tenant) made in
    it, in a TestClient: yields (client, {name: secret}, mapper, ring); the store is closed after."""
    from fastapi.testclient import TestClient

    from knnbe_qdrant import SkillMapper
    from knnbe_qdrant.service import KeyRing
    from knnbe_qdrant.service.app import create_app

    store = build_small(backend, directory, encoder, skills, memory)
    try:
        mapper = SkillMapper(store, encoder, exact=True)
        ring = KeyRing(store.documents())
        secrets = {name: ring.create(role=role, tenant=tenant, name=name)[1] for name, role, tenant in keys}
        with TestClient(create_app(mapper=mapper, limits=limits, load_in_background=False), **client_options) as client:
            yield client, secrets, mapper, ring
    finally:
        store.close()
