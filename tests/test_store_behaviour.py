"""One behavioural suite, run unchanged on every backend (embedded Qdrant Edge, qdrant-client local mode, and a
real server when QDRANT_URL is set)."""

import numpy as np
import pytest

from knnbe_qdrant import ModelMismatchError, StoreCorruptError
from knnbe_qdrant._schema import GLOBAL_TENANT, MEMORY, SKILLS, memory_point_id, skill_point_id

DIM = 8


def unit(rng, n):
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def store(empty_store):
    empty_store.initialize("test-model", DIM)
    return empty_store


def test_new_store_is_building_until_marked_ready(store):
    assert store.manifest.state == "building"
    with pytest.raises(StoreCorruptError, match="half-built"):
        store.check_ready()
    store.mark_ready(counts={SKILLS: 0})
    assert store.check_ready().counts == {SKILLS: 0}


def test_model_recorded_and_mismatch_refused(store):
    assert (store.manifest.model, store.manifest.dimension) == ("test-model", DIM)
    store.check_model("test-model", DIM)
    with pytest.raises(ModelMismatchError, match="test-model"):
        store.check_model("other-model", DIM)
    with pytest.raises(ModelMismatchError):
        store.check_model("test-model", DIM * 2)
    with pytest.raises(ModelMismatchError):
        store.initialize("other-model", DIM)


def test_upsert_is_idempotent_with_deterministic_ids(store):
    rng = np.random.default_rng(0)
    ids = [memory_point_id(GLOBAL_TENANT, "s1", f"text {i}") for i in range(5)]
    payloads = [{"tenant": GLOBAL_TENANT, "text": f"text {i}", "skill_id": "s1"} for i in range(5)]
    store.upsert(MEMORY, ids, unit(rng, 5), payloads)
    store.upsert(MEMORY, ids, unit(rng, 5), payloads)
    assert store.count(MEMORY) == 5
    assert memory_point_id(GLOBAL_TENANT, "s1", "text 0") == ids[0]
    assert skill_point_id(GLOBAL_TENANT, "s1") != skill_point_id("acme", "s1")


def test_query_batch_is_exact_nearest_first_and_filtered(store):
    rng = np.random.default_rng(1)
    vectors = unit(rng, 40)
    ids = [skill_point_id("a" if i % 2 else "b", f"s{i}") for i in range(40)]
    payloads = [{"tenant": "a" if i % 2 else "b", "skill_id": f"s{i}", "label": f"L{i}"} for i in range(40)]
    store.upsert(SKILLS, ids, vectors, payloads)
    queries = unit(rng, 3)
    results = store.query_batch(SKILLS, queries, 5, where={"tenant": "a"}, payload=["skill_id"], exact=True)
    assert len(results) == 3
    for q, hits in zip(queries, results):
        expected = sorted((i for i in range(40) if i % 2), key=lambda i: -float(vectors[i] @ q))[:5]
        assert [h.payload["skill_id"] for h in hits] == [f"s{i}" for i in expected]
        assert [h.score for h in hits] == pytest.approx([float(vectors[i] @ q) for i in expected], abs=1e-5)
        assert all(set(h.payload) == {"skill_id"} for h in hits)
    both = store.query_batch(SKILLS, queries[:1], 40, where={"tenant": ["a", "b"]}, exact=True)
    assert len(both[0]) == 40


def test_retrieve_returns_existing_points_with_unit_vectors(store):
    rng = np.random.default_rng(2)
    vectors = unit(rng, 3)
    ids = [skill_point_id(GLOBAL_TENANT, f"s{i}") for i in range(3)]
    store.upsert(SKILLS, ids, vectors, [{"tenant": GLOBAL_TENANT, "skill_id": f"s{i}"} for i in range(3)])
    absent = skill_point_id(GLOBAL_TENANT, "nope")
    records = {r.id: r for r in store.retrieve(SKILLS, [ids[0], ids[2], absent], with_vectors=True)}
    assert set(records) == {ids[0], ids[2]}
    np.testing.assert_allclose(records[ids[2]].vector, vectors[2], atol=1e-6)
    assert store.retrieve(SKILLS, []) == []


def test_delete_scroll_and_count(store):
    rng = np.random.default_rng(3)
    ids = [memory_point_id("x" if i < 20 else "y", "s", str(i)) for i in range(30)]
    payloads = [{"tenant": "x" if i < 20 else "y", "skill_id": "s", "text": str(i)} for i in range(30)]
    store.upsert(MEMORY, ids, unit(rng, 30), payloads)
    assert store.count(MEMORY, where={"tenant": "x"}) == 20
    store.delete(MEMORY, ids[:5])
    assert store.count(MEMORY) == 25
    scrolled = list(store.scroll(MEMORY, where={"tenant": "x"}, batch=7))
    assert sorted(int(r.payload["text"]) for r in scrolled) == list(range(5, 20))


def test_drop_then_reinitialize_starts_empty(store):
    rng = np.random.default_rng(4)
    store.upsert(SKILLS, [skill_point_id(GLOBAL_TENANT, "s")], unit(rng, 1), [{"tenant": GLOBAL_TENANT}])
    store.drop()
    assert not store.exists()
    store.initialize("test-model", DIM)
    assert store.count(SKILLS) == 0


def test_an_empty_location_is_not_a_store(empty_store):
    from knnbe_qdrant import StoreNotFoundError

    assert not empty_store.exists()
    with pytest.raises(StoreNotFoundError, match="knnbe-qdrant build"):
        empty_store.check_ready()
