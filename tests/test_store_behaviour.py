"""One behavioural suite, run unchanged on every backend (embedded Qdrant Edge, qdrant-client local mode, and a
real server when QDRANT_URL is set)."""

import uuid

import numpy as np
import pytest

from knnbe_qdrant import ModelMismatchError, StoreCorruptError
from knnbe_qdrant._lookups import MemoryPayloads
from knnbe_qdrant._schema import GLOBAL_TENANT, MEMORY, SKILLS, hide_key, memory_point_id, skill_point_id
from knnbe_qdrant.store.base import key_id, point_key

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


def test_query_keys_batch_is_query_batch_as_keys_and_scores(store):
    rng = np.random.default_rng(4)
    vectors = unit(rng, 30)
    ids = [memory_point_id("a" if i % 3 else GLOBAL_TENANT, "s1", f"t{i}") for i in range(30)]
    store.upsert(MEMORY, ids, vectors, [{"tenant": "a" if i % 3 else GLOBAL_TENANT, "skill_id": "s1", "text": f"t{i}"}
                                        for i in range(30)])
    queries = unit(rng, 4)
    where = {"tenant": GLOBAL_TENANT}
    hits = store.query_batch(MEMORY, queries, 6, where=where, payload=False, exact=True)
    keyed = store.query_keys_batch(MEMORY, queries, 6, where=where, exact=True)
    assert len(keyed) == 4 and all(len(keys) == 6 for keys, _ in keyed)
    for row, (keys, scores) in zip(hits, keyed):
        assert [key_id(k) for k in keys] == [h.id for h in row]
        assert scores == pytest.approx([h.score for h in row], abs=1e-6)
        assert all(isinstance(k, int) for k in keys)
    assert store.query_keys_batch(MEMORY, queries[:0], 6) == []


def test_point_keys_round_trip_and_an_integer_id_stays_an_integer():
    pid = memory_point_id(GLOBAL_TENANT, "s1", "text")
    assert key_id(point_key(pid)) == pid and point_key(uuid.UUID(pid)) == point_key(pid)
    assert point_key(7) == 7


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


def test_a_neighbour_deleted_before_its_payload_is_read_is_left_out(store):
    rng = np.random.default_rng(5)
    vectors = unit(rng, 6)
    texts = [f"t{i}" for i in range(6)]
    ids = [memory_point_id(GLOBAL_TENANT, "s1", t) for t in texts]
    store.upsert(MEMORY, ids, vectors, [{"tenant": GLOBAL_TENANT, "skill_id": "s1", "text": t} for t in texts])
    cache = MemoryPayloads(store)
    [(keys, scores)] = store.query_keys_batch(MEMORY, vectors[:1], 6, exact=True)
    order = [texts[ids.index(key_id(k))] for k in keys]
    known = cache.fill([(keys[:2], scores[:2])])  # the two nearest are cached now
    assert known.row_texts(0) == order[:2]
    store.delete(MEMORY, [ids[texts.index(order[1])], ids[texts.index(order[3])]])  # a cached one, an unread one
    nbrs = cache.fill([(keys, scores)])
    # The cached point's payload stays right (ids are content-addressed); the unread deleted one is left out, and
    # each similarity stays beside its own payload.
    kept = [i for i in range(6) if i != 3]
    assert nbrs.row_texts(0) == [order[i] for i in kept]
    assert nbrs.row_skill_ids(0) == ["s1"] * len(kept)
    assert nbrs.row_scores(0) == [scores[i] for i in kept]
    assert cache.hits == 2 and cache.misses == 2 + 4


def test_a_memory_point_with_an_integer_id_is_no_neighbour_and_breaks_nothing(store):
    """Qdrant also allows unsigned integer ids; this package writes none, but a point written by another hand
    (on a shared server) must not break mapping: its key is not a UUID's, no retrieve finds it, it is left out."""
    rng = np.random.default_rng(6)
    vectors = unit(rng, 2)
    ours = memory_point_id(GLOBAL_TENANT, "s1", "ours")
    store.upsert(MEMORY, [ours], vectors[:1], [{"tenant": GLOBAL_TENANT, "skill_id": "s1", "text": "ours"}])
    store.upsert(MEMORY, [7], vectors[1:], [{"tenant": GLOBAL_TENANT, "skill_id": "s2", "text": "foreign"}])
    [(keys, scores)] = store.query_keys_batch(MEMORY, vectors[1:], 2, exact=True)
    assert sorted(keys, key=str) == sorted([7, point_key(ours)], key=str)
    nbrs = MemoryPayloads(store).fill([(keys, scores)])
    assert nbrs.row_texts(0) == ["ours"]


def test_every_kind_of_write_is_seen_by_the_next_read_of_its_fields(store):
    """Reads of payload fields may be served from a cache (the embedded backend keeps one): each write must be seen
    by the next query and retrieve, whichever fields they ask for, and changing what a read gave changes nothing."""
    rng = np.random.default_rng(7)
    vectors = unit(rng, 4)
    ids = [skill_point_id(GLOBAL_TENANT, f"s{i}") for i in range(4)]
    fields = ["skill_id", "label", hide_key("acme")]

    def seen():
        [hits] = store.query_batch(SKILLS, vectors[:1], 4, payload=fields, exact=True)
        by_query = {h.payload["skill_id"]: h.payload for h in hits}
        by_retrieve = {r.payload["skill_id"]: r.payload for r in store.retrieve(SKILLS, ids, payload=fields)}
        assert by_query == by_retrieve
        return by_query

    store.upsert(SKILLS, ids, vectors, [{"tenant": GLOBAL_TENANT, "skill_id": f"s{i}", "label": f"L{i}"}
                                        for i in range(4)])
    assert {s: p["label"] for s, p in seen().items()} == {f"s{i}": f"L{i}" for i in range(4)}
    seen()["s0"]["label"] = "changed by the caller"
    assert seen()["s0"]["label"] == "L0"
    store.set_payload(SKILLS, ids[:1], {"label": "renamed"})
    assert seen()["s0"]["label"] == "renamed"
    store.set_payload(SKILLS, ids[1:2], {hide_key("acme"): "acme"})
    assert seen()["s1"][hide_key("acme")] == "acme"
    store.delete_payload(SKILLS, ids[1:2], [hide_key("acme")])
    assert hide_key("acme") not in seen()["s1"]
    store.upsert(SKILLS, ids[2:3], vectors[2:3], [{"tenant": GLOBAL_TENANT, "skill_id": "s2", "label": "again"}])
    assert seen()["s2"]["label"] == "again"
    store.delete(SKILLS, ids[3:])
    assert set(seen()) == {"s0", "s1", "s2"}
    store.delete_where(SKILLS, {"skill_id": "s2"})
    assert set(seen()) == {"s0", "s1"}
    assert [r.payload["label"] for r in store.retrieve(SKILLS, ids[:1], payload=["label"])] == ["renamed"]


def test_the_embedded_payload_cache_stays_within_its_capacity_however_many_tenants_read():
    """Each tenant's reads ask for its own hide key, so one point's payload is held once per tenant: the bound
    counts payloads, and a write forgets every copy of the points it touches."""
    from knnbe_qdrant.store.payloads import PayloadCache

    cache = PayloadCache(capacity=50)
    for tenant in range(40):
        fields = ("label", hide_key(f"t{tenant}"))
        cache.put(cache.epoch, fields, {key: {"label": f"L{key}"} for key in range(5)})
        assert len(cache) <= 50
    assert cache.get(1, ("label", hide_key("t39"))) == {"label": "L1"}
    with cache.writing([1]):
        assert cache.get(2, ("label", hide_key("t39"))) is None  # nothing is served while a write is in flight
    assert cache.get(1, ("label", hide_key("t39"))) is None and cache.get(2, ("label", hide_key("t39"))) is not None
    epoch = cache.epoch
    with cache.writing([3]):
        pass
    cache.put(epoch, ("label",), {4: {"label": "read before the write"}})  # a write came between: not filed
    assert cache.get(4, ("label",)) is None


def test_neighbours_tied_at_the_cut_are_taken_in_skill_then_text_order(store):
    """Memory holds one text under several skills, so neighbours tie; the k kept must not depend on which tied
    point the engine returned first."""
    rng = np.random.default_rng(8)
    [near, same] = unit(rng, 2)
    points = [("s9", "head")] + [(skill, text) for skill in ("s3", "s1", "s2") for text in ("b", "a")]
    ids = [memory_point_id(GLOBAL_TENANT, skill, text) for skill, text in points]
    vectors = np.stack([near] + [same] * 6)
    store.upsert(MEMORY, ids, vectors, [{"tenant": GLOBAL_TENANT, "skill_id": s, "text": t} for s, t in points])
    query = (0.9 * near + 0.1 * same)[None]
    voters = MemoryPayloads(store).fill(store.query_keys_batch(MEMORY, query, 7, exact=True))
    assert voters.row_texts(0)[0] == "head"
    kept = voters.nearest(4, 1e-6)
    assert list(zip(kept.row_skill_ids(0), kept.row_texts(0))) == [("s9", "head"), ("s1", "a"), ("s1", "b"),
                                                                  ("s2", "a")]
    assert kept.row_scores(0)[1:] == [voters.row_scores(0)[1]] * 3


def test_the_memory_payload_cache_starts_afresh_at_capacity_and_what_it_gave_stays_right(store):
    rng = np.random.default_rng(9)
    vectors = unit(rng, 8)
    texts = [f"t{i}" for i in range(8)]
    ids = [memory_point_id(GLOBAL_TENANT, f"s{i % 3}", t) for i, t in enumerate(texts)]
    store.upsert(MEMORY, ids, vectors, [{"tenant": GLOBAL_TENANT, "skill_id": f"s{i % 3}", "text": t}
                                        for i, t in enumerate(texts)])
    cache = MemoryPayloads(store, capacity=4)
    results = store.query_keys_batch(MEMORY, vectors, 3, exact=True)
    expected = [[texts[ids.index(key_id(k))] for k in keys] for keys, _ in results]
    first = cache.fill(results[:1])
    for row in range(1, 8):  # each fill adds up to three points: the table is replaced several times
        voters = cache.fill(results[row: row + 1] + results[:1])
        assert voters.row_texts(0) == expected[row] and voters.row_texts(1) == expected[0]
        assert voters.row_skill_ids(0) == [f"s{texts.index(t) % 3}" for t in expected[row]]
    assert first.row_texts(0) == expected[0]  # a batch filled before the resets keeps its own table
    assert len(cache._table.texts) <= 4 + 3
