"""Property, at the HTTP layer: random interleavings of operations through the keys of several tenants; no response
to one tenant's key ever holds another tenant's name, skill ids or sentences, and no tenant's operation changes what
another sees. Every backend."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knnbe_qdrant import SkillMapper
from knnbe_qdrant.service import KeyRing
from knnbe_qdrant.service.app import create_app
from tests.helpers import BACKENDS, build_small

PROBES = ["widget engineering with Python", "SQL databases and widgets", "team leadership for widget makers"]
GLOBAL_SKILLS = ["Python (computer programming)", "SQL", "lead a team"]
N_TENANTS = 3

operation = st.one_of(
    st.tuples(st.just("add_skill"), st.integers(0, N_TENANTS - 1), st.integers(0, 2)),
    st.tuples(st.just("add_sentence"), st.integers(0, N_TENANTS - 1), st.integers(0, 4)),
    st.tuples(st.just("hide_skill"), st.integers(0, N_TENANTS - 1), st.integers(0, 2)),
    st.tuples(st.just("hide_sentence"), st.integers(0, N_TENANTS - 1), st.integers(0, 2)),
    st.tuples(st.just("relabel"), st.integers(0, N_TENANTS - 1), st.integers(0, 2)),
    st.tuples(st.just("retire_own"), st.integers(0, N_TENANTS - 1), st.integers(0, 2)),
)


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, tmp_path_factory, encoder, small_skills):
    store = build_small(request.param, tmp_path_factory.mktemp(f"http-iso-{request.param}"), encoder,
                        small_skills[:40])
    app = create_app(mapper=SkillMapper(store, encoder, exact=True), load_in_background=False)
    with TestClient(app) as client:
        yield client, KeyRing(store.documents())
    store.close()


def call(client, method, path, key, **kw):
    r = client.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kw)
    assert r.status_code < 500, r.text
    return r


def same(a, b, tol: float = 1e-5) -> bool:
    """Equal views, floats to within `tol`: an exact search may differ in the last bits once other points are
    added (qdrant-client's local mode multiplies matrices whose shape changed), which is no change of view."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b))
    return a == b


def view(client, key) -> str:
    """Everything a key can read, as one JSON text: mapping with evidence, skills, memory of the probes' skills,
    audit, status."""
    parts = [call(client, "POST", "/v1/map", key, json={"sentences": PROBES, "top": 10}).json(),
             call(client, "GET", "/v1/skills", key, params={"limit": 10_000}).json()]
    own = call(client, "GET", "/v1/skills", key, params={"own": "true", "limit": 10_000}).json()["items"]
    for skill in [*GLOBAL_SKILLS, *(p["skill_id"] for p in own)]:
        parts.append(call(client, "GET", "/v1/memory", key, params={"skill": skill, "limit": 10_000}).json())  # noqa: PERF401
    audit = call(client, "GET", "/v1/audit", key).json()["items"]
    parts.append([{k: v for k, v in a.items() if k != "at"} for a in audit])
    parts.append(call(client, "GET", "/v1/status", key).json()["own"])
    return json.dumps(parts, sort_keys=True)


def apply(client, op, tenant: str, key: str) -> None:
    kind, _, n = op
    if kind == "add_skill":
        call(client, "POST", "/v1/skills", key, json={"id": f"{tenant}:widget-{n}", "label": f"{tenant} widgets {n}"})
    elif kind == "add_sentence":
        own = [p["skill_id"] for p in call(client, "GET", "/v1/skills", key, params={"own": "true"}).json()["items"]]
        skill = own[n % len(own)] if own else GLOBAL_SKILLS[n % len(GLOBAL_SKILLS)]
        call(client, "POST", "/v1/memory", key, json={"skill": skill, "text": f"{tenant} builds widgets, note {n}"})
    elif kind == "hide_skill":
        call(client, "POST", "/v1/skills/retire", key, json={"skill": GLOBAL_SKILLS[n]})
    elif kind in ("hide_sentence", "relabel"):
        rows = call(client, "GET", "/v1/memory", key, params={"skill": GLOBAL_SKILLS[n], "limit": 10_000}).json()
        globals_ = sorted(p["text"] for p in rows["items"] if p["tenant"] == "_global")
        if globals_ and kind == "hide_sentence":
            call(client, "POST", "/v1/memory/remove", key, json={"skill": GLOBAL_SKILLS[n], "text": globals_[0]})
        elif globals_:
            call(client, "POST", "/v1/memory/relabel", key,
                 json={"skill": GLOBAL_SKILLS[n], "text": globals_[0], "to": GLOBAL_SKILLS[(n + 1) % 3]})
    elif kind == "retire_own":
        own = sorted(p["skill_id"] for p in call(client, "GET", "/v1/skills", key, params={"own": "true"}).json()[
            "items"])
        if own:
            call(client, "POST", "/v1/skills/retire", key, json={"skill": own[n % len(own)]})


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=5))
def test_no_response_to_a_tenant_holds_another_tenants_data(world, ops):
    client, ring = world
    run = uuid.uuid4().hex[:6]
    tenants = [f"t{run}x{i}" for i in range(N_TENANTS)]
    keys = {t: ring.create(role="curator", tenant=t, name=f"{t}-key")[1] for t in tenants}
    _, admin = ring.create(role="admin", name=f"admin-{run}")
    try:
        before = {t: view(client, keys[t]) for t in tenants}
        for op in ops:
            actor = tenants[op[1]]
            apply(client, op, actor, keys[actor])
            for t in tenants:
                seen = view(client, keys[t])
                for other in tenants:
                    if other != t:
                        assert other not in seen, f"{t} sees {other} after {op} by {actor}"
                if t != actor:
                    assert same(json.loads(seen), json.loads(before[t])), f"{op} by {actor} changed what {t} sees"
                before[t] = seen
    finally:
        for t in tenants:
            call(client, "DELETE", f"/v1/tenants/{t}", admin)
