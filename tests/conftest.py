"""Shared fixtures: the real bundled MiniLM, a small real slice of ESCO, and stores on every backend."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import pytest

from knnbe_qdrant import Encoder, QdrantClientStore, default_memory, load_taxonomy
from tests.helpers import ANCHOR_LABELS, BACKENDS, SERVER_STORES, SMALL_BUILD, build_small, make_store, run


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


@pytest.fixture(scope="session", autouse=True)
def _drop_server_stores():
    yield
    for store in SERVER_STORES:  # fixtures may have closed their client: reconnect with the same prefix
        with contextlib.suppress(Exception):  # the server went away: nothing left to clean
            QdrantClientStore.connect(os.environ["QDRANT_URL"], api_key=os.environ.get("QDRANT_API_KEY"),
                                      prefix=store.prefix).drop()


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


@pytest.fixture(params=BACKENDS)
def racing(request, tmp_path, encoder, small_skills):
    """A store of the anchor skills alone (built in seconds) on each backend, for races and backups."""
    store = build_small(request.param, tmp_path, encoder, small_skills[:20])
    yield store, encoder
    store.close()


@pytest.fixture(scope="session")
def cli_taxonomy(tmp_path_factory, small_skills):
    path = tmp_path_factory.mktemp("taxonomy") / "skills.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": s.id, "label": s.label, "alt_labels": list(s.alt_labels),
                                "description": s.description}) + "\n" for s in small_skills[:120])
    return path


@pytest.fixture(scope="session")
def cli_store(tmp_path_factory, cli_taxonomy):
    path = tmp_path_factory.mktemp("cli") / "store"
    r = run("build", "--taxonomy", cli_taxonomy, *SMALL_BUILD, store=path)
    assert r.returncode == 0, r.stderr.decode()
    assert b"store ready" in r.stdout
    return path


@pytest.fixture
def store_copy(cli_store, tmp_path):
    """A copy of the command line's small store, for a test that changes or damages it."""
    path = tmp_path / "store"
    shutil.copytree(cli_store, path)
    return path
