"""Property: whatever tenants do, in whatever order, no tenant ever sees another tenant's data, and no tenant's
operation changes what another tenant sees. Random interleavings by hypothesis, on every backend."""

from __future__ import annotations

import contextlib
import itertools
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knnbe_qdrant import ConflictError, Curator, InvalidInputError, NotFoundError, SkillMapper
from knnbe_qdrant._schema import GLOBAL_TENANT, MEMORY
from tests.helpers import BACKENDS, build_small

PROBES = ["widget engineering with Python", "SQL databases and widgets", "team leadership for widget makers"]
GLOBAL_SKILLS = ["Python (computer programming)", "SQL", "lead a team"]

operation = st.one_of(
    st.tuples(st.just("add_skill"), st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.just("add_sentence"), st.integers(0, 2), st.integers(0, 4)),
    st.tuples(st.just("hide_skill"), st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.just("hide_sentence"), st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.just("retire_own"), st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.just("delete_tenant"), st.integers(0, 2), st.just(0)),
)


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, tmp_path_factory, encoder, small_skills):
    store = build_small(request.param, tmp_path_factory.mktemp(f"isolation-{request.param}"), encoder,
                        small_skills[:40])
    curator = Curator(store, encoder, user="prop")
    mapper = SkillMapper(store, encoder, exact=True)
    probes = encoder.encode(PROBES)
    yield curator, mapper, probes
    store.close()


def view(curator: Curator, mapper: SkillMapper, probes, tenant: str) -> tuple:
    """Everything a tenant can observe: mapping results with evidence, and its skill and memory listings."""
    results = mapper.map_vectors(PROBES, probes, top=10, tenant=tenant)
    mapped = tuple(
        (s.id, round(s.score, 6), tuple(sorted(e.text for e in s.evidence))) for r in results for s in r.skills
    )
    skills = tuple(sorted((p["tenant"], p["skill_id"]) for p in curator.list_skills(tenant=tenant)))
    memory = tuple(sorted((p["tenant"], p["skill_id"], p["text"]) for p in curator.list_memory(tenant=tenant)))
    return mapped, skills, memory


def assert_only_own_and_global(observed: tuple, tenant: str, others: list[str]) -> None:
    mapped, skills, memory = observed
    assert all(t in (GLOBAL_TENANT, tenant) for t, _ in skills)
    assert all(t in (GLOBAL_TENANT, tenant) for t, _, _ in memory)
    for other in others:
        assert not any(other in skill_id for skill_id, _, _ in mapped)
        assert not any(other in text for _, _, evidence in mapped for text in evidence)


def apply(curator: Curator, op: tuple, tenant: str) -> None:
    kind, _, n = op
    if kind == "add_skill":
        curator.add_skill(f"{tenant}:widget-{n}", f"{tenant} widget engineering {n}", tenant=tenant)
    elif kind == "add_sentence":
        own = [p["skill_id"] for p in curator.list_skills(tenant=tenant, own_only=True)]
        skill = own[n % len(own)] if own else GLOBAL_SKILLS[n % len(GLOBAL_SKILLS)]
        curator.add_sentence(f"{tenant} builds widgets with Python and SQL, note {n}", skill, tenant=tenant)
    elif kind == "hide_skill":
        curator.retire_skill(GLOBAL_SKILLS[n], tenant=tenant)
    elif kind == "hide_sentence":
        rows = sorted(curator.list_memory(GLOBAL_SKILLS[n], tenant=tenant), key=lambda p: p["text"])
        globals_ = [p for p in rows if p["tenant"] == GLOBAL_TENANT]
        if globals_:
            curator.remove_sentence(globals_[0]["text"], GLOBAL_SKILLS[n], tenant=tenant)
    elif kind == "retire_own":
        own = sorted(p["skill_id"] for p in curator.list_skills(tenant=tenant, own_only=True))
        if own:
            curator.retire_skill(own[n % len(own)], tenant=tenant)
    elif kind == "delete_tenant":
        curator.delete_tenant(tenant)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=8))
def test_tenants_never_see_or_change_each_other(world, ops):
    curator, mapper, probes = world
    run = uuid.uuid4().hex[:6]
    tenants = [f"t{run}x{i}" for i in range(3)]
    try:
        before = {t: view(curator, mapper, probes, t) for t in tenants}
        global_before = view(curator, mapper, probes, None)
        for op in ops:
            actor = tenants[op[1]]
            # A documented refusal (a duplicate skill id, say) is an allowed outcome; it must change nothing.
            with contextlib.suppress(InvalidInputError, NotFoundError, ConflictError):  # a duplicate skill id
                apply(curator, op, actor)
            for t in tenants:
                observed = view(curator, mapper, probes, t)
                assert_only_own_and_global(observed, t, [o for o in tenants if o != t])
                if t != actor:
                    assert observed == before[t], f"{op} by {actor} changed what {t} sees"
                before[t] = observed
            assert view(curator, mapper, probes, None) == global_before, f"{op} by {actor} changed the global view"
    finally:
        for t in tenants:
            with contextlib.suppress(NotFoundError):  # a tenant that never wrote anything has nothing to delete
                curator.delete_tenant(t)
    for _mapped, skills, memory in (view(curator, mapper, probes, t) for t in tenants):
        assert all(owner == GLOBAL_TENANT for owner, _ in skills)
        assert all(owner == GLOBAL_TENANT for owner, _, _ in memory)


def test_delete_tenant_restores_the_global_view(world):
    curator, mapper, probes = world
    tenant = f"t{uuid.uuid4().hex[:6]}"
    untouched = view(curator, mapper, probes, tenant)
    for op in itertools.product(["hide_skill", "hide_sentence"], [0], range(3)):
        apply(curator, op, tenant)
    assert view(curator, mapper, probes, tenant) != untouched
    curator.delete_tenant(tenant)
    assert view(curator, mapper, probes, tenant) == untouched


def test_a_tenant_larger_than_a_deletion_chunk_goes_whole_and_alone(world, monkeypatch):
    """The deletion goes in chunks (the embedded engine answers no query while it deletes); every chunk goes, and
    nothing of another tenant."""
    from knnbe_qdrant import _tenancy

    curator = world[0]
    monkeypatch.setattr(_tenancy, "_DELETE_CHUNK", 3)
    tenant, other = f"t{uuid.uuid4().hex[:6]}", f"t{uuid.uuid4().hex[:6]}"
    skill = next(curator.list_skills())["skill_id"]
    for i in range(8):
        curator.add_sentence(f"chunked deletion sentence {i}", skill, tenant=tenant)
    curator.add_sentence("the other tenant's sentence", skill, tenant=other)
    curator.delete_tenant(tenant)
    assert tenant not in curator.tenants()
    assert curator.tenants()[other][MEMORY] == 1
    curator.delete_tenant(other)
