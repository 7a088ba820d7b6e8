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
