"""Edits and mapping at the same time: threads sharing one store (both backends)."""

from __future__ import annotations

import threading

import pytest

from knnbe_qdrant import Curator, SkillMapper
from knnbe_qdrant._schema import GLOBAL_TENANT
from tests.helpers import BACKENDS, build_small


@pytest.fixture(scope="module", params=BACKENDS)
def shared(request, tmp_path_factory, encoder, small_skills):
    store = build_small(request.param, tmp_path_factory.mktemp(f"threads-{request.param}"), encoder, small_skills[:40])
    yield store
    store.close()


def test_writers_and_mappers_in_parallel(shared, encoder):
    """Writers add sentences for their own tenants while mappers map for theirs. Defined behaviour: no call fails,
    every write is visible once acknowledged (read-your-writes, checked by each writer right after its write), and
    no mapper ever sees another tenant's sentence."""
    curator = Curator(shared, encoder, user="threads")
    mapper = SkillMapper(shared, encoder, exact=True)
    errors: list[BaseException] = []
    sentence = "Python programming for data pipelines"

    def writer(tenant: str) -> None:
        try:
            for i in range(6):
                text = f"{tenant} writes Python services, task {i}"
                curator.add_sentence(text, "Python (computer programming)", tenant=tenant)
                seen = {p["text"] for p in curator.list_memory("Python (computer programming)", tenant=tenant,
                                                               own_only=True)}
                assert text in seen
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    def reader(tenant: str) -> None:
        try:
            for _ in range(8):
                [result] = mapper.map([sentence], top=10, tenant=tenant)
                for skill in result.skills:
                    for e in skill.evidence:
                        assert not any(w in e.text for w in ("w0", "w1") if w != tenant), e.text
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("w0", "w1")]
    threads += [threading.Thread(target=reader, args=(t,)) for t in ("w0", "r1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert curator.tenants()["w0"]["memory"] == 6 and curator.tenants()["w1"]["memory"] == 6
    for t in ("w0", "w1"):
        curator.delete_tenant(t)
    assert set(curator.tenants()) == set()
    assert shared.count("memory", where={"tenant": GLOBAL_TENANT}) > 0


def test_reads_of_a_point_renamed_over_and_over_never_go_back_in_time(empty_store):
    """The embedded backend serves payload fields from a cache. Threads read one point (query and retrieve) while
    another renames it 200 times: no read may give a label older than one a thread has already seen, and once the
    writer is done every read gives its last label. On a backend without the cache this holds by the engine."""
    import numpy as np

    from knnbe_qdrant._schema import SKILLS, skill_point_id

    store = empty_store
    store.initialize("test-model", 4)
    vector = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    pid = skill_point_id(GLOBAL_TENANT, "s")
    store.upsert(SKILLS, [pid], vector, [{"tenant": GLOBAL_TENANT, "skill_id": "s", "label": "0"}])
    renames, done = 200, threading.Event()
    errors: list[BaseException] = []
    if store.backend == "embedded":
        widen_the_race_windows(store, SKILLS)

    def reader(use_query: bool) -> None:
        last = 0
        try:
            while True:
                finished = done.is_set()
                if use_query:
                    [[hit]] = store.query_batch(SKILLS, vector, 1, payload=["label"], exact=True)
                    label = int(hit.payload["label"])
                else:
                    [record] = store.retrieve(SKILLS, [pid], payload=["label"])
                    label = int(record.payload["label"])
                assert label >= last, f"read {label} after {last}"
                last = label
                if finished:
                    assert label == renames
                    return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    for i in range(1, renames + 1):
        store.set_payload(SKILLS, [pid], {"label": str(i)})
    done.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]


def widen_the_race_windows(store, collection):
    """Sleep inside the embedded backend's two windows where a cache goes wrong if anything does: between a
    payload read from the shard and its filing, and between a write's change to the shard and its return."""
    import random
    import time

    read, shard = store._retrieve, store._shards[collection]

    def slow_read(*args, **kwargs):
        out = read(*args, **kwargs)
        time.sleep(random.random() / 1000)
        return out

    class SlowWrites:
        def __getattr__(self, name):
            return getattr(shard, name)

        def update(self, operation):
            shard.update(operation)
            time.sleep(random.random() / 1000)

    store._retrieve = slow_read
    store._shards[collection] = SlowWrites()
