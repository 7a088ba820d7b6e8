"""Shared fixtures: the real bundled MiniLM, a small real slice of ESCO, and stores on every backend."""

from __future__ import annotations

import os

import pytest

from knnbe_qdrant import EdgeStore, Encoder, QdrantClientStore, build_store, default_memory, load_taxonomy

# Skills the tests' sentences are about, so the slice is small (fast) yet the answers are meaningful.
ANCHOR_LABELS = {
    "Python (computer programming)", "SQL", "PostgreSQL", "JavaScript", "Java (computer programming)",
    "manage staff", "implement nursing care", "plan nursing care", "lead a team", "communicate with customers", "English",
    "German", "develop software prototype", "use databases", "cook meat dishes", "cook fish", "clean rooms",
}


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    return Encoder()


@pytest.fixture(scope="session")
def small_skills():
    skills = load_taxonomy()
    anchors = [s for s in skills if s.label in ANCHOR_LABELS]
    assert len(anchors) == len(ANCHOR_LABELS), "an anchor label is not in ESCO v1.1.0"
    return anchors + [s for s in skills[:250] if s.label not in ANCHOR_LABELS]


@pytest.fixture(scope="session")
def small_memory(small_skills):
    return default_memory(small_skills)


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
                                          prefix=f"knnbe_test_{os.getpid()}_{len(_SERVER_STORES)}_")
        _SERVER_STORES.append(store)
        return store
    raise ValueError(backend)


def build_small(backend: str, directory, encoder, skills, memory=None):
    """A store on `backend` in `directory`, built from these real skills and (by default) their default memory."""
    store = make_store(backend, directory / "store")
    build_store(store, encoder, skills=skills, memory=default_memory(skills) if memory is None else memory,
                progress=False)
    return store


_SERVER_STORES: list = []


@pytest.fixture(scope="session", autouse=True)
def _drop_server_stores():
    yield
    for store in _SERVER_STORES:  # fixtures may have closed their client: reconnect with the same prefix
        try:
            QdrantClientStore.connect(os.environ["QDRANT_URL"], api_key=os.environ.get("QDRANT_API_KEY"),
                                      prefix=store.prefix).drop()
        except Exception:  # the server went away: nothing left to clean
            pass


BACKENDS = ["embedded", "qdrant-local"] + (["qdrant"] if os.environ.get("QDRANT_URL") else [])


@pytest.fixture(params=BACKENDS)
def empty_store(request, tmp_path):
    store = make_store(request.param, tmp_path / "store")
    yield store
    try:
        store.drop()
    except Exception:
        store.close()


@pytest.fixture(scope="session")
def built_stores(tmp_path_factory, encoder, small_skills, small_memory):
    """A small store built from real ESCO skills and memory on each backend, once per test session."""
    stores = {b: build_small(b, tmp_path_factory.mktemp(b), encoder, small_skills, small_memory) for b in BACKENDS}
    yield stores
    for store in stores.values():
        store.close()


@pytest.fixture(scope="session", params=BACKENDS)
def built_store(request, built_stores):
    return built_stores[request.param]
