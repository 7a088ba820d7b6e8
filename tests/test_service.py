"""The HTTP API's contract on every backend: what each role may do, that the tenant comes from the key, limits and
errors, and that the answers are the library's own. The app runs in-process under FastAPI's TestClient (the real
ASGI stack); tests/test_service_process.py runs it as a real server on loopback."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from knnbe_qdrant import EdgeStore, NotFoundError, SkillMapper
from knnbe_qdrant.service import KeyRing
from knnbe_qdrant.service.app import create_app
from knnbe_qdrant.service.keys import Key
from knnbe_qdrant.service.state import Limits
from tests.helpers import BACKENDS, SQL, build_small, make_store, small_service

LIMITS = Limits(max_body_bytes=20_000, max_sentences=8, max_chars=300)


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, tmp_path_factory, encoder, small_skills, small_memory):
    keys = [("acme-reader", "reader", "acme"), ("acme-curator", "curator", "acme"), ("beta-curator", "curator", "beta"),
            ("beta-reader", "reader", "beta"), ("root", "admin", None)]
    with small_service(request.param, tmp_path_factory.mktemp(f"svc-{request.param}"), encoder, small_skills,
                       small_memory, keys, LIMITS) as served:
        yield served


def auth(keys, name):
    return {"Authorization": f"Bearer {keys[name]}"}


def test_health_readiness_and_metrics(served):
    client, keys, mapper, _ = served
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    client.post("/v1/map", json={"sentences": [SQL]}, headers=auth(keys, "acme-reader"))
    text = client.get("/metrics").text
    assert 'knnbe_http_requests_total{endpoint="/v1/map",method="POST",status="200"}' in text
    assert "knnbe_http_request_seconds_bucket" in text and "knnbe_map_batch_sentences_count" in text
    [gauge] = [line for line in text.splitlines() if line.startswith("knnbe_store_unindexed_points ")]
    waiting = mapper.store.unindexed()
    assert gauge.split()[1] == ("NaN" if waiting is None else str(float(waiting))), (gauge, waiting)
    # Refusals are counted too, by what they answered and under their endpoint: a bad body (422), a body over the
    # limit and a request without a key (413 and 401 from the gate, before any route sees them), and a path no
    # route has.
    h = auth(keys, "acme-reader")
    assert client.post("/v1/map", json={"sentences": [""]}, headers=h).status_code == 422
    assert client.post("/v1/map", content=b"x" * (LIMITS.max_body_bytes + 1), headers=h).status_code == 413
    assert client.post("/v1/map", json={"sentences": [SQL]}).status_code == 401
    assert client.get("/v1/nowhere", headers=h).status_code == 404
    text = client.get("/metrics").text
    assert 'knnbe_http_requests_total{endpoint="/v1/map",method="POST",status="422"}' in text
    assert 'knnbe_http_requests_total{endpoint="/v1/map",method="POST",status="413"}' in text
    assert 'knnbe_http_requests_total{endpoint="/v1/map",method="POST",status="401"}' in text
    assert 'knnbe_http_errors_total{endpoint="unmatched",kind="404"}' in text
    assert client.get("/docs").status_code == 200 and "/v1/map" in client.get("/openapi.json").text
    # Made-up methods and paths are counted under one label each: a client cannot add series without bound.
    before = len(client.get("/metrics").text.splitlines())
    for i in range(50):
        client.request(f"MADEUP{i}", "/healthz")
        client.request(f"MADEUP{i}", f"/v1/nowhere/{i}")
    text = client.get("/metrics").text
    assert "MADEUP" not in text and "nowhere" not in text and len(text.splitlines()) <= before + 20
    assert 'knnbe_http_requests_total{endpoint="/healthz",method="other",status="405"}' in text


def test_the_service_maps_on_the_workers_its_limits_name(served, encoder, tmp_path):
    from knnbe_qdrant.service.batching import worker_shape

    client, _, mapper, _ = served
    assert client.app.state.service.batcher.workers == worker_shape()[0]
    app = create_app(mapper=mapper, limits=Limits(map_workers=3), load_in_background=False)
    with TestClient(app) as other:
        assert other.app.state.service.batcher.workers == 3
        assert other.get("/readyz").status_code == 200


def test_map_answers_what_the_library_answers(served):
    client, keys, mapper, _ = served
    sentences = [SQL, "You will lead a small team of nurses"]
    r = client.post("/v1/map", json={"sentences": sentences, "top": 4}, headers=auth(keys, "acme-reader"))
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    want = [x.to_dict() for x in mapper.map(sentences, top=4, tenant="acme")]
    assert [[s["id"] for s in g["skills"]] for g in got] == [[s["id"] for s in w["skills"]] for w in want]
    for g, w in zip(got, want):
        for gs, ws in zip(g["skills"], w["skills"]):
            assert gs["score"] == pytest.approx(ws["score"], abs=1e-6)
            assert set(gs) - {"tokens"} == {"id", "label", "score", "bi_encoder", "knn", "evidence"}
            assert gs.get("tokens") == ws.get("tokens")  # the words matched on, as the library says


def test_keys_are_required_and_roles_enforced(served):
    client, keys, _, ring = served
    body = {"sentences": [SQL]}
    assert client.post("/v1/map", json=body).status_code == 401
    assert client.post("/v1/map", json=body, headers={"Authorization": "Bearer knq_nope"}).status_code == 401
    assert client.post("/v1/map", json=body, headers={"Authorization": keys["acme-reader"]}).status_code == 401
    r = client.post("/v1/memory", json={"skill": "SQL", "text": "Tuning slow SQL joins"},
                    headers=auth(keys, "acme-reader"))
    assert r.status_code == 403 and "reader" in r.json()["error"]
    assert client.get("/v1/tenants", headers=auth(keys, "acme-curator")).status_code == 403
    _, secret = ring.create(role="reader", tenant="acme", name="short-lived")
    assert client.get("/v1/whoami", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    ring.revoke("short-lived")
    r = client.get("/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 401 and r.json() == {"error": "unknown or revoked key"}


def test_a_damaged_key_record_or_log_line_fails_no_other_keys_request(served, caplog):
    """A key record edited by hand into another shape made every request to the service a 500, every key's; a log
    line that is JSON but no object made the log's tail a 500. The damaged record now authenticates nobody and is
    named in the log; the other keys work; the line is skipped like a torn one."""
    from knnbe_qdrant.store.documents import tenant_audit

    client, keys, mapper, ring = served
    documents = mapper.store.documents()
    _, secret = ring.create(role="curator", tenant="acme", name="tampered")
    tampered = documents.all("keys")["tampered"]
    variants = {"tampered-number": 5, "tampered-role": {**tampered, "name": "tampered-role", "role": "root"},
                "tampered-tenant": {**tampered, "name": "tampered-tenant", "tenant": ["acme"]},
                "tampered-empty-tenant": {**tampered, "name": "tampered-empty-tenant", "tenant": ""},
                "tampered-admin-of-a-tenant": {**tampered, "name": "tampered-admin-of-a-tenant", "role": "admin"},
                "tampered-name": {**tampered, "name": "someone-else"},
                "tampered-digest": {**tampered, "name": "tampered-digest", "sha256": None}}
    documents.put_many("keys", variants)
    documents.put("keys", "tampered", {**tampered, "role": "superuser"})  # the same secret, now no role we know
    with caplog.at_level("ERROR", logger="knnbe_qdrant.keys"):
        assert client.get("/v1/whoami", headers=auth(keys, "acme-reader")).status_code == 200
        r = client.get("/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 401 and r.json() == {"error": "unknown or revoked key"}
    assert "tampered, tampered-admin-of-a-tenant, tampered-digest" in caplog.text and "tampered-role" in caplog.text
    assert {k.name for k in ring.list()}.isdisjoint({"tampered", *variants})
    with pytest.raises(NotFoundError, match="not in the shape"):
        ring.revoke("tampered-number")
    # A tenant's deletion revokes its keys past the damaged records (it failed on them).
    _, leaving = ring.create(role="reader", tenant="leaving", name="leaving-reader")
    assert client.delete("/v1/tenants/leaving", headers=auth(keys, "root")).status_code == 200
    assert client.get("/v1/whoami", headers={"Authorization": f"Bearer {leaving}"}).status_code == 401
    # A line of the tenant's log that is JSON but no entry: skipped, the entries around it read.
    _, reader = ring.create(role="reader", tenant="damaged", name="damaged-reader")
    documents.append(tenant_audit("damaged"), {"action": "before the damage"})
    if hasattr(documents, "root"):
        with open(documents._path(tenant_audit("damaged"), ".jsonl"), "ab") as f:
            f.write(b'5\n["x"]\n"text"\n')
    documents.append(tenant_audit("damaged"), {"action": "after the damage"})
    r = client.get("/v1/audit", params={"limit": 2}, headers={"Authorization": f"Bearer {reader}"})
    assert r.status_code == 200 and [e["action"] for e in r.json()["items"]] == ["after the damage",
                                                                               "before the damage"]
    documents.put_many("keys", {name: {**tampered, "name": name, "revoked_at": "2026-12-07"}
                                for name in ["tampered", *variants]})  # the module's other tests see no damage


def test_a_curator_edits_its_tenant_only_and_is_recorded(served):
    client, keys, _, _ = served
    h_acme, h_beta = auth(keys, "acme-curator"), auth(keys, "beta-curator")
    r = client.post("/v1/skills", json={"id": "acme:vdb", "label": "administer vector databases"}, headers=h_acme)
    assert r.status_code == 201, r.text
    sentences = ["Operate and tune Qdrant vector database clusters in production.",
                 "Design payload indexes and HNSW settings for a vector search engine."]
    for text in sentences:
        assert client.post("/v1/memory", json={"skill": "acme:vdb", "text": text}, headers=h_acme).status_code == 201
    probe = {"sentences": ["You will administer our Qdrant vector database and tune its HNSW indexes."], "top": 3}
    acme = client.post("/v1/map", json=probe, headers=auth(keys, "acme-reader")).json()["results"][0]["skills"]
    assert acme[0]["id"] == "acme:vdb" and acme[0]["evidence"]
    beta = client.post("/v1/map", json=probe, headers=auth(keys, "beta-reader")).json()
    assert "acme" not in json.dumps(beta) and "vector database clusters" not in json.dumps(beta)
    # beta cannot reach acme's skill, even by naming it
    r = client.post("/v1/memory", json={"skill": "acme:vdb", "text": "x y z"}, headers=h_beta)
    assert r.status_code == 404
    rows = client.get("/v1/memory", params={"skill": "acme:vdb"}, headers=auth(keys, "acme-reader")).json()["items"]
    assert {row["text"] for row in rows} == set(sentences)
    assert {row["created_by"] for row in rows} == {"acme-curator"} and {row["tenant"] for row in rows} == {"acme"}
    audit = client.get("/v1/audit", headers=auth(keys, "acme-reader")).json()["items"]
    assert {a["action"] for a in audit} >= {"skill add", "memory add"} and {a["tenant"] for a in audit} == {"acme"}
    assert client.get("/v1/audit", headers=auth(keys, "beta-reader")).json()["items"] == []


def test_every_key_edits_with_the_one_encoder_loaded_at_the_first_edit(served):
    """The service acts for each key through a copy of its curator: the copies share one encoder (each loading its
    own cost a model load per write, with the GIL held, stalling every request in flight)."""
    client, _, _, _ = served
    service = client.app.state.service
    acme, beta = (Key(name, tenant, "curator", "2026-01-01") for name, tenant in (("a", "acme"), ("b", "beta")))
    first, second = service.curator_for(acme), service.curator_for(beta)
    assert first.user == "a" and second.user == "b"
    assert first.encoder is second.encoder is service.curator_for(acme).encoder


def test_a_curator_undoes_a_hiding_over_http(served):
    client, keys, _, _ = served
    h = auth(keys, "acme-curator")
    ids = lambda: [s["id"] for s in client.post("/v1/map", json={"sentences": [SQL], "top": 5},  # noqa: E731
                                                headers=auth(keys, "acme-reader")).json()["results"][0]["skills"]]
    sql = client.get("/v1/skills/search", params={"q": "SQL", "limit": 1}, headers=h).json()["items"][0]["id"]
    answer = lambda result: {"result": result, "skill": sql, "revision": 0}  # noqa: E731 - built: revision 0
    assert client.post("/v1/skills/retire", json={"skill": sql}, headers=h).json() == answer("hidden")
    assert sql not in ids()
    assert client.post("/v1/skills/reinstate", json={"skill": sql},
                       headers=auth(keys, "acme-reader")).status_code == 403
    assert client.post("/v1/skills/reinstate", json={"skill": sql}, headers=h).json() == answer("unhidden")
    assert client.post("/v1/skills/reinstate", json={"skill": sql}, headers=h).json() == answer("already active")
    assert sql in ids()
    assert client.get("/v1/audit", params={"limit": 1}, headers=h).json()["items"][0]["action"] == "skill unhidden"


def test_a_curator_naming_the_revision_it_read_never_overwrites_an_edit_it_did_not_see(served):
    """Two curators of one tenant read a skill and both change its description: the second, naming the revision
    it read, gets 409 and the first's edit stands. Every skill edit answers the revision after it, and the audit
    records it, which orders one skill's entries as its edits landed."""
    client, keys, _, _ = served
    h = auth(keys, "acme-curator")
    added = client.post("/v1/skills", json={"id": "acme:rev", "label": "revision over http"}, headers=h)
    assert added.status_code == 201 and added.json() == {"result": "added", "skill": "acme:rev", "revision": 1}
    again = client.post("/v1/skills", json={"id": "acme:rev", "label": "revision over http"}, headers=h)
    assert again.status_code == 201 and again.json()["result"] == "already added"  # a retry: not logged again
    listed = client.get("/v1/skills", params={"own": "true"}, headers=h).json()["items"]
    assert [p["revision"] for p in listed if p["skill_id"] == "acme:rev"] == [1]
    first = client.post("/v1/skills/update", json={"skill": "acme:rev", "description": "alice's", "revision": 1},
                        headers=h)
    assert first.json() == {"result": "updated", "skill": "acme:rev", "revision": 2}
    second = client.post("/v1/skills/update", json={"skill": "acme:rev", "description": "bob's", "revision": 1},
                         headers=h)
    assert second.status_code == 409 and "at revision 2, not 1" in second.json()["error"]
    [now] = [p for p in client.get("/v1/skills", params={"own": "true"}, headers=h).json()["items"]
             if p["skill_id"] == "acme:rev"]
    assert (now["description"], now["revision"]) == ("alice's", 2)
    # The first update retried (its answer lost): with its stale revision still 409, saying the skill holds what it
    # asks; without one, done: neither written nor logged again.
    retry = client.post("/v1/skills/update", json={"skill": "acme:rev", "description": "alice's", "revision": 1},
                        headers=h)
    assert retry.status_code == 409 and "already holds what this edit asks" in retry.json()["error"]
    retry = client.post("/v1/skills/update", json={"skill": "acme:rev", "description": "alice's"}, headers=h)
    assert retry.json() == {"result": "unchanged", "skill": "acme:rev", "revision": 2}
    # Named by its label, the answer still gives the id.
    retired = client.post("/v1/skills/retire", json={"skill": "revision over http", "revision": 2}, headers=h)
    assert retired.json() == {"result": "retired", "skill": "acme:rev", "revision": 3}
    retry = client.post("/v1/skills/retire", json={"skill": "acme:rev"}, headers=h)
    assert retry.json() == {"result": "already retired", "skill": "acme:rev", "revision": 3}
    for bad in ("3", -1, True, 1.5):
        r = client.post("/v1/skills/reinstate", json={"skill": "acme:rev", "revision": bad}, headers=h)
        assert r.status_code == 422 and "revision" in r.text, (bad, r.text)
    # The schema's "integer" allows 2.0 (schemathesis sends such): taken as 2, so the stale revision's 409.
    r = client.post("/v1/skills/reinstate", json={"skill": "acme:rev", "revision": 2.0}, headers=h)
    assert r.status_code == 409 and "at revision 3, not 2" in r.text
    audit = client.get("/v1/audit", params={"limit": 3}, headers=h).json()["items"]
    assert [(a["action"], a.get("revision"), a.get("description")) for a in audit] == [
        ("skill retired", 3, None), ("skill update", 2, "alice's"), ("skill add", 1, None)]
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert schema["SkillUpdate"]["properties"]["revision"]["anyOf"][0] == {"type": "integer", "minimum": 0}
    assert schema["SkillEdited"]["required"] == ["result", "skill", "revision"]


def test_a_tenant_at_its_quota_gets_403_and_another_tenant_still_adds(served):
    """serve --tenant-max-skills / --tenant-max-sentences: a tenant's adds past its quota are refused with 403 and
    a message that says what to do; its status shows the quota; another tenant is not counted against it."""
    from knnbe_qdrant import Quota

    client, keys, _, _ = served
    service = client.app.state.service
    own = client.get("/v1/status", headers=auth(keys, "acme-reader")).json()["own"]
    assert client.get("/v1/status", headers=auth(keys, "acme-reader")).json()["quota"] == {
        "skills": service.limits.quota.skills, "memory": service.limits.quota.sentences,
        "audit": service.limits.quota.audit_entries}
    service.curator.quota = Quota(skills=own["skills"] + 1, sentences=own["memory"] + 1)
    try:
        h = auth(keys, "acme-curator")
        assert client.post("/v1/skills", json={"id": "acme:quota", "label": "quota over http"},
                           headers=h).status_code == 201
        r = client.post("/v1/skills", json={"id": "acme:quota2", "label": "quota over http 2"}, headers=h)
        assert r.status_code == 403 and "may hold" in r.json()["error"] and "raise the quota" in r.json()["error"]
        text = "A sentence that fills acme's quota."
        assert client.post("/v1/memory", json={"skill": "acme:quota", "text": text}, headers=h).status_code == 201
        r = client.post("/v1/memory", json={"skill": "acme:quota", "text": "One too many."}, headers=h)
        assert r.status_code == 403 and "memory sentences of its own" in r.json()["error"]
        assert client.get("/v1/status", headers=h).json()["quota"] == {"skills": own["skills"] + 1,
                                                                       "memory": own["memory"] + 1, "audit": None}
        hb = auth(keys, "beta-curator")
        r = client.post("/v1/skills", json={"id": "beta:quota", "label": "beta quota"}, headers=hb)
        assert r.status_code == 201
        assert client.post("/v1/memory", json={"skill": "beta:quota", "text": text}, headers=hb).status_code == 201
        assert client.post("/v1/memory/remove", json={"skill": "acme:quota", "text": text}, headers=h).json() == {
            "result": "removed"}
        assert client.post("/v1/memory", json={"skill": "acme:quota", "text": "Room again."},
                           headers=h).status_code == 201
        assert "quota" not in client.get("/v1/status", headers=auth(keys, "root")).json()  # the global layer: none
        # A key asking for its status again and again counts its points once a second at most: a count holds
        # Python's lock (Edge's binding), 13 ms for 129,831 points. (An admin's status also reads the store's.)
        counted = []
        real = service.mapper.store.count
        service.mapper.store.count = lambda *a, **kw: (counted.append(1), real(*a, **kw))[1]
        try:
            for _ in range(20):
                assert client.get("/v1/status", headers=auth(keys, "acme-reader")).status_code == 200
        finally:
            del service.mapper.store.count
        assert len(counted) <= 4, len(counted)  # two collections, at most twice each within the loop
    finally:
        service.curator.quota = service.limits.quota


def test_a_tenant_whose_audit_log_is_at_its_quota_gets_403_and_another_tenant_still_edits(served):
    """serve --tenant-max-audit-entries: every edit adds an entry to the tenant's audit log and a removal frees
    none, so a tenant adding and removing one sentence over and over, within its quotas of points, grew its log
    (and the log of every edit) until the disk every tenant needs was full. At its quota its edits are refused
    with 403, nothing written, nothing dropped from its log; another tenant edits on."""
    from knnbe_qdrant import Quota

    client, keys, _, _ = served
    service = client.app.state.service
    h, hb = auth(keys, "acme-curator"), auth(keys, "beta-curator")
    held = client.get("/v1/status", headers=h).json()["own"]["audit"]
    assert held >= len(client.get("/v1/audit", params={"limit": 1000}, headers=h).json()["items"])  # lines
    before, service.curator.quota = service.curator.quota, Quota(audit_entries=held + 2)
    text = "A sentence added and removed over and over, to fill the audit log."
    try:
        assert client.post("/v1/memory", json={"skill": "SQL", "text": text}, headers=h).status_code == 201
        assert client.post("/v1/memory/remove", json={"skill": "SQL", "text": text}, headers=h).status_code == 200
        for edit in (("/v1/memory", {"skill": "SQL", "text": text}),
                     ("/v1/skills", {"id": "acme:audit-full", "label": "an audit log at its quota"})):
            r = client.post(edit[0], json=edit[1], headers=h)
            assert r.status_code == 403 and "audit log holds" in r.json()["error"], r.text
            assert "raise the quota" in r.json()["error"]
        status = client.get("/v1/status", headers=h).json()
        assert status["own"]["audit"] == held + 2 and status["quota"]["audit"] == held + 2
        assert text not in client.get("/v1/memory", params={"skill": "SQL"}, headers=h).text
        assert client.post("/v1/memory", json={"skill": "SQL", "text": text}, headers=hb).status_code == 201
        assert client.post("/v1/memory/remove", json={"skill": "SQL", "text": text}, headers=hb).status_code == 200
        assert client.get("/v1/audit", params={"limit": 1}, headers=h).json()["items"][0]["action"] == "memory removed"
    finally:
        service.curator.quota = before
    assert client.post("/v1/memory", json={"skill": "SQL", "text": text}, headers=h).status_code == 201  # raised
    assert client.post("/v1/memory/remove", json={"skill": "SQL", "text": text}, headers=h).status_code == 200


def test_edits_sent_at_once_stop_at_the_audit_quota_not_past_it(served, monkeypatch):
    """The quota counts the edits under way, not only the entries written: six edits at once, room for two, held
    inside their edit until all have been answered or are waiting, gave four entries (a tenant's four edit threads)."""
    from concurrent.futures import ThreadPoolExecutor

    from knnbe_qdrant import Quota

    client, keys, _, _ = served
    service = client.app.state.service
    h = auth(keys, "acme-curator")
    held = client.get("/v1/status", headers=h).json()["own"]["audit"]
    encoder = service.curator.encoder
    encode, release = encoder.encode, threading.Event()

    def held_inside(texts, **kw):
        if texts[0].startswith("at once"):
            release.wait(30)
        return encode(texts, **kw)

    monkeypatch.setattr(encoder, "encode", held_inside)
    before, service.curator.quota = service.curator.quota, Quota(audit_entries=held + 2)
    texts = [f"at once {i}: a sentence sent with five others" for i in range(6)]
    try:
        with ThreadPoolExecutor(6) as pool:
            sent = [pool.submit(client.post, "/v1/memory", json={"skill": "SQL", "text": t}, headers=h)
                    for t in texts]
            deadline = time.monotonic() + 30
            while sum(f.done() for f in sent) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            release.set()
            answers = [f.result() for f in sent]
        assert sorted(r.status_code for r in answers) == [201, 201, 403, 403, 403, 403], [r.text for r in answers]
        assert all("audit log holds" in r.json()["error"] for r in answers if r.status_code == 403)
        assert client.get("/v1/status", headers=h).json()["own"]["audit"] == held + 2
    finally:
        release.set()
        service.curator.quota = before
        for t in texts:
            client.post("/v1/memory/remove", json={"skill": "SQL", "text": t}, headers=h)


def test_a_tenants_log_that_cannot_be_read_refuses_its_edits_with_a_clear_error_and_no_one_elses(served):
    """Counted before every edit (the audit quota), a log that cannot be read (its permissions, a disk error; here
    a directory in its place) made each of its tenant's edits a bare 500; now a 503 naming the file and the way
    out, nothing written, and another tenant's edits go on."""
    from knnbe_qdrant.store.documents import tenant_audit

    client, keys, mapper, ring = served
    documents = mapper.store.documents()
    if not hasattr(documents, "root"):
        pytest.skip("a log file of the embedded store")
    _, secret = ring.create(role="curator", tenant="unreadable", name="unreadable-curator")
    h = {"Authorization": f"Bearer {secret}"}
    path = documents._path(tenant_audit("unreadable"), ".jsonl")
    path.mkdir()
    text = "A sentence whose tenant's audit log cannot be read."
    try:
        for r in (client.post("/v1/memory", json={"skill": "SQL", "text": text}, headers=h),
                  client.get("/v1/audit", headers=h), client.get("/v1/status", headers=h)):
            assert r.status_code == 503 and "cannot read the log" in r.json()["error"], r.text
            assert str(path) in r.json()["error"] and "permissions" in r.json()["error"]
        assert text not in client.get("/v1/memory", params={"skill": "SQL"}, headers=h).text
        hb = auth(keys, "beta-curator")
        assert client.post("/v1/memory", json={"skill": "SQL", "text": text}, headers=hb).status_code == 201
        assert client.post("/v1/memory/remove", json={"skill": "SQL", "text": text}, headers=hb).status_code == 200
    finally:
        path.rmdir()
    assert client.post("/v1/memory", json={"skill": "SQL", "text": text}, headers=h).status_code == 201
    assert client.delete("/v1/tenants/unreadable", headers=auth(keys, "root")).status_code == 200


def test_a_logs_length_is_counted_once_then_by_what_was_appended(tmp_path):
    """FileDocuments.log_length, which each edit of a tenant at its audit quota asks: the lines appended since the
    last count are read, not the whole log; a log cleared or replaced since (a tenant's deletion, a restore) is
    counted afresh."""
    from knnbe_qdrant.store.documents import FileDocuments, tenant_audit

    kind = tenant_audit("Acme")
    documents = FileDocuments(tmp_path)
    assert documents.log_length(kind) == 0
    documents.extend(kind, [{"n": i} for i in range(3)])
    assert documents.log_length(kind) == 3
    documents.append(kind, {"n": 3})
    assert FileDocuments(tmp_path).log_length(kind) == 4  # another instance, the same count
    documents.clear_log(kind)
    assert documents.log_length(kind) == 0
    documents.extend(kind, [{"n": i} for i in range(5)])
    [path] = tmp_path.glob("audit@*.jsonl")
    replaced = tmp_path / "replaced"
    replaced.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:2]) + b'{"n": "a restored one"}\n' * 4)
    assert documents.log_length(kind) == 5
    replaced.replace(path)  # another file, longer than what was counted
    assert documents.log_length(kind) == 6


def test_listings_page_through_every_item_once_while_others_edit(served):
    """`truncated` came with no way to the rest: a key seeing more than 10,000 skills could not list them all. Now
    each page gives `next`, passed back as `after`; following it lists every item once, and one that exists
    throughout is listed once even when items are added and retired between pages."""
    client, keys, _, _ = served
    h = auth(keys, "beta-curator")
    for i in range(7):
        assert client.post("/v1/skills", json={"id": f"beta:page{i}", "label": f"paged skill {i}"},
                           headers=h).status_code == 201

    def pages(path, params, edit=None):
        seen, after, turns = [], None, 0
        while True:
            r = client.get(path, params={**params, **({"after": after} if after else {})}, headers=h)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["truncated"] == (body["next"] is not None) and len(body["items"]) <= params["limit"]
            seen += body["items"]
            after, turns = body["next"], turns + 1
            if edit and turns == 1:
                edit()
            if after is None:
                return seen, turns

    everything = [p["skill_id"] for p in client.get("/v1/skills", params={"own": "true", "limit": 100},
                                                     headers=h).json()["items"]]
    seen, turns = pages("/v1/skills", {"own": "true", "limit": 2})
    assert [p["skill_id"] for p in seen] == everything and turns == (len(everything) + 1) // 2
    assert {f"beta:page{i}" for i in range(7)} <= set(everything)

    def edit():
        client.post("/v1/skills", json={"id": "beta:page-late", "label": "a skill added between pages"}, headers=h)
        client.post("/v1/skills/retire", json={"skill": everything[-1]}, headers=h)

    seen, _ = pages("/v1/skills", {"own": "true", "limit": 2}, edit)
    ids = [p["skill_id"] for p in seen]
    assert len(ids) == len(set(ids)) and set(everything[:-1]) <= set(ids) and everything[-1] not in ids

    texts = [f"Paged sentence {i} about writing SQL reports." for i in range(5)]
    for text in texts:
        client.post("/v1/memory", json={"skill": "beta:page0", "text": text}, headers=h)
    seen, turns = pages("/v1/memory", {"skill": "beta:page0", "limit": 2})
    assert sorted(p["text"] for p in seen) == sorted(texts) and turns == 3
    for bad in ("nonsense", "' OR 1=1", "0" * 36):
        r = client.get("/v1/skills", params={"after": bad}, headers=h)
        assert r.status_code == 422 and "after" in r.json()["error"], r.text
    assert "next" not in client.get("/v1/audit", headers=h).json()  # a log's tail: no pages


def test_hiding_a_global_sentence_is_the_tenants_own_business(served):
    client, keys, _, _ = served
    h = auth(keys, "beta-curator")
    listed = client.get("/v1/memory", params={"skill": "SQL", "limit": 1}, headers=h).json()["items"]
    text = listed[0]["text"]
    assert client.post("/v1/memory/remove", json={"skill": "SQL", "text": text}, headers=h).json() == {
        "result": "hidden"}
    seen_by_beta = client.get("/v1/memory", params={"skill": "SQL", "limit": 10_000}, headers=h).json()["items"]
    seen_by_acme = client.get("/v1/memory", params={"skill": "SQL", "limit": 10_000},
                              headers=auth(keys, "acme-reader")).json()["items"]
    assert text not in {p["text"] for p in seen_by_beta} and text in {p["text"] for p in seen_by_acme}
    # The hide mark names beta; acme must not learn that beta exists.
    assert "beta" not in json.dumps(seen_by_acme) and all("hidden_for" not in p for p in seen_by_acme)
    assert client.post("/v1/memory/reinstate", json={"skill": "SQL", "text": text},
                       headers=auth(keys, "acme-reader")).status_code == 403
    assert client.post("/v1/memory/reinstate", json={"skill": "SQL", "text": text}, headers=h).json() == {
        "result": "unhidden"}
    seen_by_beta = client.get("/v1/memory", params={"skill": "SQL", "limit": 10_000}, headers=h).json()["items"]
    assert text in {p["text"] for p in seen_by_beta}
    assert client.get("/v1/audit", params={"limit": 1}, headers=h).json()["items"][0]["action"] == "memory unhidden"


def test_limits_and_bad_input_are_clear_errors_without_a_trace(served):
    client, keys, _, _ = served
    h = auth(keys, "acme-reader")
    cases = [
        ({"sentences": ["a b"] * 9}, 422, "at most 8 per request"),
        ({"sentences": ["x" * 301]}, 422, "at most 300"),
        ({"sentences": ["  "]}, 422, "empty"),
        ({"sentences": [SQL], "top": 0}, 422, "top"),
        ({"sentences": [SQL], "topp": 3}, 422, "topp"),
        ({"sentences": "one string"}, 422, "sentences"),
    ]
    for body, status, words in cases:
        r = client.post("/v1/map", json=body, headers=h)
        assert r.status_code == status and words in r.json()["error"], (body, r.text)
    for decompose in (False, True):  # no sentence: nothing to map, and the batcher's worker lives on
        r = client.post("/v1/map", json={"sentences": [], "decompose": decompose}, headers=h)
        assert r.status_code == 200 and r.json() == {"results": []}, r.text
    assert client.post("/v1/map", json={"sentences": [SQL]}, headers=h).json()["results"][0]["skills"]
    r = client.post("/v1/map", content=b'{"sentences": ["' + b"a" * 30_000 + b'"]}', headers=h)
    assert r.status_code == 413 and "20000 bytes" in r.json()["error"]
    r = client.post("/v1/map", content=b"{not json", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 422
    odd = (client.get("/v1/nope", headers=h), client.post("/v1/memory", json={}, headers=auth(keys, "acme-curator")))
    for r in odd:
        assert r.status_code in (404, 422) and "Traceback" not in r.text and "error" in r.json()


def test_a_whole_posting_is_split_and_aggregated(served):
    client, keys, _, _ = served
    text = "We build REST services in Python.\n- You will write SQL queries every day.\n- Fluent English."
    r = client.post("/v1/map/posting", json={"text": text, "id": "p1", "top": 5}, headers=auth(keys, "beta-reader"))
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["id"] == "p1" and record["sentences"] == 3 and len(record["skills"]) == 5
    assert all(s["sentences"] for s in record["skills"])


def test_decomposition_over_http_is_the_librarys(served):
    client, keys, mapper, _ = served
    multi = "You will design and maintain REST APIs in Python and write efficient SQL queries against PostgreSQL."
    r = client.post("/v1/map", json={"sentences": [multi, SQL], "top": 6, "decompose": True},
                    headers=auth(keys, "acme-reader"))
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    want = [x.to_dict() for x in mapper.map([multi, SQL], top=6, tenant="acme", decompose=True)]
    assert [[(s["id"], s.get("piece")) for s in g["skills"]] for g in got] == [
        [(s["id"], s.get("piece")) for s in w["skills"]] for w in want]
    assert any("piece" in s for s in got[0]["skills"])
    plain = client.post("/v1/map", json={"sentences": [multi], "top": 6, "decompose": False},
                        headers=auth(keys, "acme-reader")).json()
    assert not any("piece" in s for s in plain["results"][0]["skills"])
    default = client.post("/v1/map", json={"sentences": [multi], "top": 6}, headers=auth(keys, "acme-reader")).json()
    assert default["results"][0] == plain["results"][0]  # the store's default: no decomposition, for the shipped model
    assert client.get("/v1/status", headers=auth(keys, "acme-reader")).json()["decompose"] is False
    r = client.post("/v1/map/posting", json={"text": multi, "top": 6, "decompose": True},
                    headers=auth(keys, "acme-reader"))
    assert any("piece" in s for skill in r.json()["skills"] for s in skill["sentences"])


def test_admin_manages_tenants_and_the_global_layer(served):
    client, keys, _, _ = served
    h = auth(keys, "root")
    tenants = client.get("/v1/tenants", headers=h).json()["tenants"]
    assert "acme" in tenants
    assert client.post("/v1/skills", json={"id": "global:new", "label": "operate a time machine"},
                       headers=h).status_code == 201
    found = client.get("/v1/skills/search", params={"q": "operate a time machine"},
                       headers=auth(keys, "beta-reader")).json()["items"]
    assert found[0]["id"] == "global:new"
    status = client.get("/v1/status", headers=h).json()
    assert status["store"]["state"] == "ready" and status["own"]["skills"] > 0


def test_a_tenants_audit_is_its_own_and_no_neighbour_floods_it_out(served, tmp_path):
    # Each tenant's edits go to its own log as well as the admins' one: a neighbour's flood of edits cannot push a
    # tenant's history out of its view (it could, when tenants read a filtered tail of the shared log); a backup
    # keeps each log; deleting a tenant removes its log, so a tenant made later under its name starts with none.
    from knnbe_qdrant.store.backup import backup, restore
    from knnbe_qdrant.store.documents import tenant_audit

    client, keys, mapper, ring = served
    for name, tenant in [("gamma-curator", "gamma"), ("delta-curator", "delta")]:
        keys[name] = ring.create(role="curator", tenant=tenant, name=name)[1]
    r = client.post("/v1/memory", json={"skill": "SQL", "text": "gamma's one edit"},
                    headers=auth(keys, "gamma-curator"))
    assert r.status_code == 201, r.text
    for i in range(25):
        r = client.post("/v1/memory", json={"skill": "SQL", "text": f"delta floods the log, edit {i}"},
                        headers=auth(keys, "delta-curator"))
        assert r.status_code == 201, r.text
    [own] = client.get("/v1/audit", params={"limit": 1}, headers=auth(keys, "gamma-curator")).json()["items"]
    assert (own["tenant"], own["text"]) == ("gamma", "gamma's one edit")
    delta = client.get("/v1/audit", params={"limit": 100}, headers=auth(keys, "delta-curator")).json()["items"]
    assert len(delta) == 25 and {e["tenant"] for e in delta} == {"delta"}
    everything = client.get("/v1/audit", params={"limit": 1000}, headers=auth(keys, "root")).json()["items"]
    assert {"gamma", "delta"} <= {e["tenant"] for e in everything}

    backup(mapper.store, tmp_path / "bk")
    copy = make_store("embedded" if isinstance(mapper.store, EdgeStore) else "qdrant-local", tmp_path / "copy")
    try:
        restore(copy, tmp_path / "bk")
        assert copy.documents().tail(tenant_audit("gamma"), 10) == mapper.store.documents().tail(
            tenant_audit("gamma"), 10)
        assert len(copy.documents().tail(tenant_audit("delta"), 100)) == 25
    finally:
        copy.close()

    assert client.delete("/v1/tenants/gamma", headers=auth(keys, "root")).status_code == 200
    keys["gamma-again"] = ring.create(role="reader", tenant="gamma", name="gamma-again")[1]
    assert client.get("/v1/audit", headers=auth(keys, "gamma-again")).json()["items"] == []
    admins = client.get("/v1/audit", params={"limit": 1000}, headers=auth(keys, "root")).json()["items"]
    assert admins[0]["action"] == "tenant delete" and any(e.get("text") == "gamma's one edit" for e in admins)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_store_from_before_the_tenants_logs_gets_them_from_the_shared_one_once(backend, tmp_path, encoder,
                                                                                  small_skills):
    # Its shared log only: each existing tenant's entries go to its own log when a service first opens it, those
    # from before a tenant's deletion excepted; a second start adds nothing. A tenant with no data now but a live
    # key exists too (it is listed, and `tenant delete` finds it): its keys read its history.
    from knnbe_qdrant import Curator
    from knnbe_qdrant.store.documents import AUDIT, tenant_audit

    store = build_small(backend, tmp_path, encoder, small_skills[:20])
    for tenant in ("acme", "gone"):
        Curator(store, encoder).add_sentence(f"{tenant}'s sentence about SQL", "SQL", tenant=tenant)
    documents = store.documents()
    for entry in [{"tenant": "acme", "key": "a", "action": "memory add", "text": "acme 1"},
                  {"tenant": "gone", "key": "g", "action": "memory add", "text": "gone before"},
                  {"tenant": None, "key": "root", "action": "tenant delete", "tenant_deleted": "gone"},
                  {"tenant": "gone", "key": "g2", "action": "memory add", "text": "gone after"},
                  {"tenant": "left", "key": "l", "action": "memory add", "text": "a tenant with no data now"},
                  {"tenant": "acme", "key": "a", "action": "memory add", "text": "acme 2"}]:
        documents.append(AUDIT, entry)
    ring = KeyRing(documents)
    keys = {t: ring.create(role="reader", tenant=t, name=f"r-{t}")[1] for t in ("acme", "gone", "left")}
    for _ in range(2):
        app = create_app(mapper=SkillMapper(store, encoder, exact=True), limits=LIMITS, load_in_background=False)
        with TestClient(app) as client:
            seen = {t: [e["text"] for e in client.get("/v1/audit", headers={"Authorization": f"Bearer {k}"}).json()[
                "items"]] for t, k in keys.items()}
        assert seen == {"acme": ["acme 2", "acme 1"], "gone": ["gone after"], "left": ["a tenant with no data now"]}
    assert len(documents.tail(AUDIT, 100)) == 6 and len(documents.tail(tenant_audit("left"), 9)) == 1
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_logs_tail_is_its_newest_entries_newest_first_older_unclocked_ones_last(backend, tmp_path):
    # A server store's tail is read from the `written_ns` index (newest n), not by reading and sorting the whole
    # log; entries appended before that clock existed are older than all that have it, and come after them.
    from knnbe_qdrant.store.documents import AUDIT
    from tests.helpers import make_store

    store = make_store(backend, tmp_path / "store")
    documents = store.documents()
    if backend != "embedded":  # two entries as a release before the clock wrote them
        from qdrant_client import models

        for i in (1, 2):
            store._call(store.client.upsert, store.meta_collection(), points=[models.PointStruct(
                id=str(uuid.uuid4()), vector={}, payload={"kind": AUDIT, "entry": {"at": f"2026-01-0{i}T00:00:00",
                                                                                 "n": f"old {i}"}})], wait=True)
    for i in range(30):
        documents.append(AUDIT, {"n": i})
    documents.append("audit@other", {"n": "another log"})
    assert [e["n"] for e in documents.tail(AUDIT, 5)] == [29, 28, 27, 26, 25]
    everything = [e["n"] for e in documents.tail(AUDIT, 100)]
    assert everything[:30] == list(range(29, -1, -1))
    assert everything[30:] == ([] if backend == "embedded" else ["old 2", "old 1"])
    assert [e["n"] for e in documents.tail(AUDIT, 10**9)] == everything  # a backup's read: the whole log
    store.close()


def test_an_entry_appended_after_a_torn_line_is_read_back(tmp_path):
    """A crash in an append (or a damaged disk) leaves the log without its last newline: the next entry was written
    onto the torn line, and that acknowledged edit's entry could not be read back."""
    from knnbe_qdrant.store.documents import AUDIT, FileDocuments

    documents = FileDocuments(tmp_path)
    documents.append(AUDIT, {"n": 1})
    with open(tmp_path / f"{AUDIT}.jsonl", "ab") as f:
        f.write(b'{"at": "2026-12-07T00:00:00", "n": "torn')  # the killed append: no end, no newline
    documents.append(AUDIT, {"n": 2})
    documents.append(AUDIT, {"n": 3})
    assert [e["n"] for e in documents.tail(AUDIT, 10)] == [3, 2, 1]
    assert (tmp_path / f"{AUDIT}.jsonl").read_bytes().count(b"\n") == 4  # the torn line stays, on a line of its own


def test_a_read_only_server_key_still_reads_the_logs_tail(tmp_path, monkeypatch):
    # The written_ns index is made the first time a store object reaches the meta collection, which a read-only
    # Qdrant key may not do; it answers with the error a server would (ServerError). Reads go on: the tail falls
    # back to reading the log whole.
    from knnbe_qdrant import QdrantClientStore, ServerError
    from knnbe_qdrant.store.documents import AUDIT
    from tests.helpers import make_store

    writer = make_store("qdrant-local", tmp_path / "store")
    for i in range(3):
        writer.documents().append(AUDIT, {"n": i})
    reader = QdrantClientStore(writer.client, prefix=writer.prefix)  # another process's view of the same server
    reader._guard = writer._guard

    def refused(*args, **kwargs):
        raise ServerError("the Qdrant server answered 403: a read-only API key")

    scroll = reader.client.scroll
    monkeypatch.setattr(reader.client, "create_payload_index", refused)
    monkeypatch.setattr(reader.client, "scroll", lambda *a, **k: refused() if "order_by" in k else scroll(*a, **k))
    assert [e["n"] for e in reader.documents().tail(AUDIT, 2)] == [2, 1]
    writer.close()
