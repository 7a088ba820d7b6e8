"""Live curation and tenants, on every backend, with the real model on a small real slice of ESCO."""

from __future__ import annotations

import json
import threading
import unicodedata

import numpy as np
import pytest

from knnbe_qdrant import (
    ConflictError,
    Curator,
    InputFileError,
    InvalidInputError,
    NotFoundError,
    Quota,
    QuotaExceededError,
    SkillMapper,
    load_taxonomy,
)
from knnbe_qdrant._build import memory_payload
from knnbe_qdrant._data import LabelledSentence
from knnbe_qdrant._schema import (
    GLOBAL_TENANT,
    MEMORY,
    SKILLS,
    TOMBSTONES,
    hidden_tenants,
    memory_point_id,
    skill_point_id,
)
from tests.helpers import BACKENDS, build_small

QDRANT = "Python (computer programming)"
NEW_SKILL_SENTENCES = [
    "Operate and tune Qdrant vector database clusters in production.",
    "Design collections, payload indexes and HNSW settings for a vector search engine.",
    "Experience running vector similarity search services such as Qdrant or Milvus.",
    "Monitor recall and latency of approximate nearest neighbour indexes.",
    "Manage snapshots, sharding and replication of a vector database.",
]


@pytest.fixture(scope="module", params=BACKENDS)
def store(request, tmp_path_factory, encoder, small_skills):
    s = build_small(request.param, tmp_path_factory.mktemp(f"curation-{request.param}"), encoder, small_skills[:60])
    yield s
    s.close()


@pytest.fixture
def curator(store, encoder):
    c = Curator(store, encoder, user="alice")
    yield c
    for tenant in c.tenants():
        c.delete_tenant(tenant)


@pytest.fixture
def mapper(store, encoder):
    return SkillMapper(store, encoder, exact=True)


def ids(result):
    return [s.id for s in result.skills]


def test_unseen_skill_is_learnt_from_five_sentences_without_rebuild(curator, mapper, encoder):
    sentence = "You will administer our Qdrant vector database and its HNSW indexes."
    assert "custom:vector-db-admin" not in ids(mapper.map([sentence], top=3)[0])
    calls = []
    original = encoder.encode
    encoder.encode = lambda texts, **kw: (calls.append(len(texts)), original(texts, **kw))[1]
    try:
        curator.add_skill("custom:vector-db-admin", "administer vector databases", tenant="acme")
        for text in NEW_SKILL_SENTENCES:
            assert curator.add_sentence(text, "custom:vector-db-admin", tenant="acme")
    finally:
        encoder.encode = original
    assert calls == [1] * 6  # the skill's label and each new sentence, nothing else re-encoded
    top3 = mapper.map([sentence], top=3, tenant="acme")[0]
    assert "custom:vector-db-admin" in ids(top3)
    match = next(s for s in top3.skills if s.id == "custom:vector-db-admin")
    assert {e.text for e in match.evidence} <= set(NEW_SKILL_SENTENCES) and match.evidence
    # Another tenant and the global layer do not see it.
    assert "custom:vector-db-admin" not in ids(mapper.map([sentence], top=50, tenant="other")[0])
    assert "custom:vector-db-admin" not in ids(mapper.map([sentence], top=50)[0])


def test_added_sentence_has_provenance_and_votes_at_once(curator, mapper):
    text = "Scripting data pipelines in Python is part of the daily work."
    assert curator.add_sentence(text, QDRANT, tenant="acme", source="review-2026-11")
    assert not curator.add_sentence(text, QDRANT, tenant="acme")  # idempotent
    [row] = list(curator.list_memory(QDRANT, tenant="acme", own_only=True))
    assert row["created_by"] == "alice" and row["source"] == "review-2026-11" and row["created_at"]
    assert row["tenant"] == "acme"
    result = mapper.map([text], top=3, tenant="acme")[0]
    python = next(s for s in result.skills if s.label == QDRANT)
    assert text in {e.text for e in python.evidence}
    assert text not in {e.text for s in mapper.map([text], top=10)[0].skills for e in s.evidence}


def test_a_curator_under_a_uid_with_no_login_name_records_the_uid(store, encoder, monkeypatch):
    # A container under a uid with no passwd entry and no USER (OpenShift's way): getpass raises KeyError ("getpwuid():
    # uid not found", seen under os.setuid(54321)), and no curator could start, the service's included.
    import getpass
    import os

    def no_login_name():
        raise KeyError(f"getpwuid(): uid not found: {os.getuid()}")

    monkeypatch.setattr(getpass, "getuser", no_login_name)
    monkeypatch.delenv("KNNBE_USER", raising=False)
    assert Curator(store, encoder).user == f"uid-{os.getuid()}"
    monkeypatch.setenv("KNNBE_USER", "carol")
    assert Curator(store, encoder).user == "carol"


def test_retired_skill_is_never_returned(curator, mapper, store):
    curator.add_skill("custom:retire-me", "retire me skill", tenant="acme")
    curator.add_sentence("retire me skill sentence", "custom:retire-me", tenant="acme")
    assert "custom:retire-me" in ids(mapper.map(["retire me skill"], top=3, tenant="acme")[0])
    assert curator.retire_skill("custom:retire-me", tenant="acme") == "retired"
    assert "custom:retire-me" not in ids(mapper.map(["retire me skill"], top=50, tenant="acme")[0])
    assert "custom:retire-me" not in {p["skill_id"] for p in curator.list_skills(tenant="acme")}
    with pytest.raises(NotFoundError):
        curator.add_sentence("another", "custom:retire-me", tenant="acme")


def test_a_retirement_or_a_hiding_is_undone_by_reinstating_and_only_for_that_tenant(curator, mapper):
    # A mistaken retirement was final: adding the id again was refused ("use `skill update`"), and update, retire
    # and add_sentence all said there was no such skill.
    sentence = "retire me skill, then bring it back"
    curator.add_skill("custom:back", "retire me skill", tenant="acme")
    curator.add_sentence("retire me skill, the sentence that votes", "custom:back", tenant="acme")
    assert curator.retire_skill("custom:back", tenant="acme") == "retired"
    with pytest.raises(ConflictError, match="retired or hidden for this tenant: `skill reinstate`"):
        curator.add_skill("custom:back", "retire me skill", tenant="acme")
    with pytest.raises(NotFoundError):
        curator.reinstate_skill("custom:back", tenant="beta")  # another tenant's skill: not there for it
    assert curator.reinstate_skill("retire me skill", tenant="acme") == "reinstated"  # by label, as retired
    assert curator.reinstate_skill("custom:back", tenant="acme") == "already active"  # a retry
    match = next(s for s in mapper.map([sentence], top=3, tenant="acme")[0].skills if s.id == "custom:back")
    assert "retire me skill, the sentence that votes" in {e.text for e in match.evidence}  # its votes came back
    curator.update_skill("custom:back", label="brought back skill", tenant="acme")  # editable again

    python_id = curator.resolve_skill(QDRANT)["skill_id"]
    assert curator.retire_skill(QDRANT, tenant="acme") == "hidden"
    assert curator.retire_skill(QDRANT, tenant="beta") == "hidden"
    assert curator.reinstate_skill(python_id, tenant="acme") == "unhidden"
    python = "Strong programming skills in Python."
    assert python_id in ids(mapper.map([python], top=3, tenant="acme")[0])
    assert python_id not in ids(mapper.map([python], top=50, tenant="beta")[0])  # beta's own hiding stays
    assert curator.reinstate_skill(QDRANT) == "already active"  # the global layer never retired it
    assert curator.retire_skill(QDRANT) == "retired"  # now it does: no tenant may undo that
    with pytest.raises(InvalidInputError, match="retired in the global layer: only an admin"):
        curator.reinstate_skill(python_id, tenant="acme")
    assert curator.reinstate_skill(python_id) == "reinstated"
    assert python_id in ids(mapper.map([python], top=3, tenant="acme")[0])


def test_tenant_hides_a_global_skill_and_sentence_for_itself_only(curator, mapper, store):
    sentence = "Strong programming skills in Python."
    python_id = curator.resolve_skill(QDRANT)["skill_id"]
    assert curator.retire_skill(QDRANT, tenant="acme") == "hidden"
    assert python_id not in ids(mapper.map([sentence], top=50, tenant="acme")[0])
    assert python_id in ids(mapper.map([sentence], top=3, tenant="other")[0])
    assert python_id in ids(mapper.map([sentence], top=3)[0])
    alt = next(p for p in curator.list_memory(QDRANT) if p["source"] == "esco_alt_labels")
    assert curator.remove_sentence(alt["text"], python_id, tenant="beta") == "hidden"
    assert alt["text"] not in {p["text"] for p in curator.list_memory(QDRANT, tenant="beta")}
    assert alt["text"] in {p["text"] for p in curator.list_memory(QDRANT, tenant="gamma")}
    assert alt["text"] in {p["text"] for p in curator.list_memory(QDRANT)}


def test_a_tenant_shows_a_global_sentence_it_hid_again_and_only_to_itself(curator, mapper):
    # A hidden global sentence had no way back: only an own copy of the same text, which its listings then showed as
    # the tenant's own sentence rather than the global one.
    python_id = curator.resolve_skill(QDRANT)["skill_id"]
    alt = next(p for p in curator.list_memory(QDRANT) if p["source"] == "esco_alt_labels")
    text = alt["text"]

    def votes(tenant):
        match = next((s for s in mapper.map([text], top=5, tenant=tenant)[0].skills if s.id == python_id), None)
        return match is not None and text in {e.text for e in match.evidence}

    for tenant in ("acme", "beta"):
        assert curator.remove_sentence(text, python_id, tenant=tenant) == "hidden"
    assert not votes("acme") and not votes("beta")
    assert curator.reinstate_sentence(text, QDRANT, tenant="acme") == "unhidden"
    assert curator.reinstate_sentence(text, QDRANT, tenant="acme") == "already active"  # a retry
    assert votes("acme") and not votes("beta")  # beta's own hiding stays
    assert text in {p["text"] for p in curator.list_memory(QDRANT, tenant="acme") if p["tenant"] == GLOBAL_TENANT}
    with pytest.raises(NotFoundError, match="hidden by this tenant"):
        curator.reinstate_sentence("a sentence nobody stored", QDRANT, tenant="acme")
    curator.add_sentence("acme's own sentence about Python", QDRANT, tenant="acme")
    assert curator.remove_sentence("acme's own sentence about Python", QDRANT, tenant="acme") == "removed"
    with pytest.raises(NotFoundError, match="add it again"):  # removed from its own layer: gone, not hidden
        curator.reinstate_sentence("acme's own sentence about Python", QDRANT, tenant="acme")
    assert curator.reinstate_sentence(text, QDRANT) == "already active"  # the global layer sees its own sentence


def test_a_tenants_hiding_outlives_a_global_removal_and_re_adding(curator, store, tmp_path):
    # The re-added global sentence was a new point without the tenants' marks: acme's hiding and beta's relabelled
    # copy were undone by another curator's removal and re-adding.
    python_id = curator.resolve_skill(QDRANT)["skill_id"]
    text = next(p for p in curator.list_memory(QDRANT) if p["source"] == "esco_alt_labels")["text"]
    point = memory_point_id(GLOBAL_TENANT, python_id, text)

    def sees(tenant):
        return sorted(p["skill_id"] for p in curator.list_memory(tenant=tenant) if p["text"] == text)

    sql = curator.resolve_skill("SQL")["skill_id"]
    assert curator.remove_sentence(text, QDRANT, tenant="acme") == "hidden"
    assert curator.relabel(text, QDRANT, "SQL", tenant="beta") == "relabelled"
    assert curator.remove_sentence(text, QDRANT, tenant="gone") == "hidden"
    assert curator.remove_sentence(text, QDRANT) == "removed"
    curator.delete_tenant("gone")  # its marks go with it, the removed point's included
    assert curator.add_sentence(text, QDRANT)
    assert (sees("acme"), sees("beta"), sees("gamma"), sees("gone")) == ([], [sql], [python_id], [python_id])
    [again] = store.retrieve(MEMORY, [point])
    assert hidden_tenants(again.payload) == ["acme", "beta"]
    # The same through an import of global rows.
    assert curator.remove_sentence(text, QDRANT) == "removed"
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": text, "skill": python_id}) + "\n", encoding="utf-8")
    assert curator.import_file(rows).stored == 1
    assert (sees("acme"), sees("beta"), sees("gamma")) == ([], [sql], [python_id])
    # A global relabel onto the removed point brings it back too: hidden from acme again.
    assert curator.remove_sentence(text, QDRANT) == "removed"
    assert curator.add_sentence(text, "SQL")
    assert curator.relabel(text, "SQL", QDRANT) == "relabelled"
    assert (sees("acme"), sees("beta"), sees("gamma")) == ([], [sql], [python_id])
    # A tenant that hides nothing when the point is removed gets no mark when it comes back.
    assert curator.reinstate_sentence(text, QDRANT, tenant="acme") == "unhidden"
    assert curator.remove_sentence(text, QDRANT) == "removed"
    assert curator.add_sentence(text, QDRANT)
    assert (sees("acme"), sees("beta")) == ([python_id], [sql])


def test_a_tombstone_edited_by_hand_into_another_shape_hides_nothing(curator, store):
    python_id = curator.resolve_skill(QDRANT)["skill_id"]
    text = "A global sentence removed once, its tombstone then edited by hand"
    point = memory_point_id(GLOBAL_TENANT, python_id, text)
    for hidden in ("acme", ["../x", 3, "acme"], None):
        assert curator.add_sentence(text, QDRANT)
        assert curator.remove_sentence(text, QDRANT) == "removed"
        store.documents().put(TOMBSTONES, point, {"collection": MEMORY, "hidden_for": hidden})
        assert curator.add_sentence(text, QDRANT)
        [again] = store.retrieve(MEMORY, [point])
        assert hidden_tenants(again.payload) == (["acme"] if isinstance(hidden, list) else []), hidden
        curator.remove_sentence(text, QDRANT)


def test_a_sentence_in_two_layers_votes_once(curator, mapper, tmp_path):
    # A tenant's own copy of a global sentence (added or imported by the tenant, or added globally after the
    # tenant's) has the same text and vector: it voted twice, and was the evidence twice.
    tenant_first = "Tune slow PostgreSQL queries and design database indexes."
    global_text = next(p["text"] for p in curator.list_memory("SQL"))
    before = mapper.map([global_text, tenant_first], top=5, tenant="acme")
    curator.add_sentence(global_text, "SQL", tenant="acme")
    f = tmp_path / "copy.jsonl"
    f.write_text(json.dumps({"text": global_text, "skill": "SQL"}) + "\n", encoding="utf-8")
    curator.import_file(f, tenant="beta")
    curator.add_sentence(tenant_first, "SQL", tenant="acme")
    curator.add_sentence(tenant_first, "SQL")
    try:
        for tenant in ("acme", "beta"):
            after = mapper.map([global_text, tenant_first], top=5, tenant=tenant)
            for text, result in zip((global_text, tenant_first), after):
                evidence = [e.text for s in result.skills for e in s.evidence]
                assert evidence.count(text) == 1, (tenant, text, evidence)
        assert [(s.id, s.knn) for s in after[0].skills] == [(s.id, s.knn) for s in before[0].skills]
    finally:
        curator.remove_sentence(tenant_first, "SQL")


def test_relabel_reuses_the_stored_vector(curator, store, encoder):
    text = "Writing Python scripts for SQL reporting."
    curator.add_sentence(text, QDRANT, tenant="acme")
    before = store.retrieve(MEMORY, [memory_point_id("acme", curator.resolve_skill(QDRANT)["skill_id"], text)],
                            with_vectors=True)[0]
    calls = []
    original = encoder.encode
    encoder.encode = lambda texts, **kw: (calls.append(texts), original(texts, **kw))[1]
    try:
        assert curator.relabel(text, QDRANT, "SQL", tenant="acme") == "relabelled"
    finally:
        encoder.encode = original
    assert calls == []
    sql = curator.resolve_skill("SQL")["skill_id"]
    [after] = store.retrieve(MEMORY, [memory_point_id("acme", sql, text)], with_vectors=True)
    np.testing.assert_allclose(after.vector, before.vector, atol=1e-6)
    assert after.payload["relabelled_from"] == curator.resolve_skill(QDRANT)["skill_id"]
    assert not store.retrieve(MEMORY, [before.id])
    # A retry of it (its answer lost) finds the sentence where it went: done, not 404.
    assert curator.relabel(text, QDRANT, "SQL", tenant="acme") == "already relabelled"
    with pytest.raises(NotFoundError):  # nowhere near: still no such sentence
        curator.relabel(text, QDRANT, "PostgreSQL", tenant="acme")
    # A tenant's relabel of a global sentence, retried: its copy is under the new skill, the global one hidden.
    global_text = next(curator.list_memory(sql))["text"]
    assert curator.relabel(global_text, sql, QDRANT, tenant="beta") == "relabelled"
    assert curator.relabel(global_text, sql, QDRANT, tenant="beta") == "already relabelled"
    # To the skill it has (named by id and by label): nothing moves. A tenant's copy of a global sentence was made,
    # the global one hidden, and the copy counted against the tenant's quota.
    other = next(p["text"] for p in curator.list_memory(sql) if p["text"] != global_text)
    counts = curator.tenants()
    assert curator.relabel(other, sql, "SQL", tenant="gamma") == "unchanged"
    assert curator.relabel(text, "SQL", sql, tenant="acme") == "unchanged"
    assert curator.tenants() == counts and "gamma" not in counts
    assert any(p["text"] == other and p["tenant"] == GLOBAL_TENANT for p in curator.list_memory(sql, tenant="gamma"))
    with pytest.raises(NotFoundError):
        curator.relabel("no such sentence anywhere", sql, sql, tenant="gamma")


def test_import_reports_bad_rows_by_line_and_stores_the_good_ones(curator, tmp_path):
    f = tmp_path / "labelled.csv"
    f.write_text(
        "text,skill,source\n"
        "Building REST services in Python,Python (computer programming),hr-team\n"
        ",SQL,\n"
        "Querying relational databases,no such skill,\n"
        "Writing SQL for analytics,SQL,\n",
        encoding="utf-8",
    )
    report = curator.import_file(f, tenant="acme")
    assert report.stored == 2 and report.already_stored == 0
    assert report.errors[0] == f"{f}:3: empty 'text'"
    assert report.errors[1].startswith(f"{f}:4: no skill 'no such skill'")
    texts = {p["text"]: p for p in curator.list_memory(tenant="acme", own_only=True)}
    assert set(texts) == {"Building REST services in Python", "Writing SQL for analytics"}
    assert texts["Building REST services in Python"]["source"] == "hr-team"
    assert texts["Writing SQL for analytics"]["source"] == "import:labelled.csv"
    again = curator.import_file(f, tenant="acme")
    assert (again.stored, again.already_stored) == (0, 2)


def test_export_then_import_copies_a_tenant(curator, tmp_path):
    curator.add_sentence("Python for test automation.", QDRANT, tenant="acme")
    out = tmp_path / "acme.jsonl"
    assert curator.export(out, tenant="acme") == 1
    row = json.loads(out.read_text())
    assert row["text"] == "Python for test automation." and row["source"] == "curator"
    report = curator.import_file(out, tenant="copy")
    assert report.stored == 1 and not report.errors


def test_hugging_face_dataset_import_reads_named_columns_and_reports_rows(curator, tmp_path):
    # A local dataset directory goes through the same datasets.load_dataset call as a hub name (which needs
    # internet); its columns are named like TechWolf/Synthetic-ESCO-skill-sentences (skill = preferred label).
    pytest.importorskip("datasets")
    folder = tmp_path / "synthetic-sentences"
    folder.mkdir()
    rows = [{"skill": QDRANT, "sentence": "You will write Python services."},
            {"skill": "no such skill", "sentence": "Something else."},
            {"skill": "SQL", "sentence": "Daily SQL reporting work."}]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = curator.import_hf(str(folder), tenant="acme")
    assert report.stored == 2 and len(report.errors) == 1
    assert report.errors[0].startswith(f"{folder}[train] row:2: no skill 'no such skill'")
    sources = {p["text"]: p["source"] for p in curator.list_memory(tenant="acme", own_only=True)}
    assert sources == {"You will write Python services.": f"hf:{folder}", "Daily SQL reporting work.": f"hf:{folder}"}
    with pytest.raises(InputFileError, match=r"no column \['text'\].*--text-column"):
        curator.import_hf(str(folder), text_column="text", tenant="acme")


def test_tenant_list_and_delete_remove_exactly_that_tenant(curator, store):
    before_global = {c: store.count(c, where={"tenant": GLOBAL_TENANT}) for c in (SKILLS, MEMORY)}
    curator.add_skill("custom:a", "skill of a", tenant="a")
    curator.add_sentence("sentence of a", "custom:a", tenant="a")
    curator.add_sentence("sentence of b", QDRANT, tenant="b")
    curator.retire_skill("SQL", tenant="a")
    curator.retire_skill("SQL", tenant="b")
    assert curator.tenants() == {"a": {"skills": 1, "memory": 1, "hidden": 1},
                                 "b": {"skills": 0, "memory": 1, "hidden": 1}}
    curator.delete_tenant("a")
    assert curator.tenants() == {"b": {"skills": 0, "memory": 1, "hidden": 1}}
    [sql] = store.retrieve(SKILLS, [skill_point_id(GLOBAL_TENANT, curator.resolve_skill("SQL")["skill_id"])])
    assert hidden_tenants(sql.payload) == ["b"]
    assert {c: store.count(c, where={"tenant": GLOBAL_TENANT}) for c in (SKILLS, MEMORY)} == before_global
    # A tenant whose only trace is a mark kept in a removed global point's tombstone, or its audit log, is listed
    # too (the list missed them, where `tenant delete` found them), and goes with its deletion.
    from knnbe_qdrant.store.documents import tenant_audit

    [text] = [p["text"] for p in curator.list_memory("SQL") if p["tenant"] == GLOBAL_TENANT][:1]
    curator.remove_sentence(text, "SQL", tenant="c")  # c hides the global sentence
    curator.remove_sentence(text, "SQL")  # which the global layer then removes: c's mark is in its tombstone
    store.documents().append(tenant_audit("D"), {"action": "an edit that left nothing else"})
    assert curator.tenants() == {"D": {"skills": 0, "memory": 0, "hidden": 0},
                                 "b": {"skills": 0, "memory": 1, "hidden": 1},
                                 "c": {"skills": 0, "memory": 0, "hidden": 0}}
    curator.delete_tenant("c")
    curator.delete_tenant("D")
    assert curator.tenants() == {"b": {"skills": 0, "memory": 1, "hidden": 1}}


def test_bad_curation_input_is_refused(curator):
    with pytest.raises(InvalidInputError, match="empty"):
        curator.add_sentence("  ", QDRANT)
    with pytest.raises(NotFoundError):
        curator.add_sentence("text", "no such skill")
    with pytest.raises(InvalidInputError, match="not a valid name"):
        curator.add_sentence("text", QDRANT, tenant="../etc")
    with pytest.raises(ConflictError, match="already exists"):
        curator.add_skill(curator.resolve_skill("SQL")["skill_id"], "dup", tenant="acme")
    with pytest.raises(InvalidInputError, match="global layer"):
        curator.update_skill("SQL", label="x", tenant="acme")


def _nfd(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text)
    assert decomposed != text
    return decomposed


def test_a_text_in_another_unicode_spelling_is_the_same_text(curator, mapper, store, encoder, tmp_path):
    # "é" as one letter (NFC) or as "e" and a combining accent (NFD, as macOS pastes it) looks and encodes the same:
    # it was two points voting twice, and a label findable in one spelling only.
    composed = "Run the café's espresso machine and plan the crème brûlée menu."
    assert curator.add_sentence(composed, QDRANT, tenant="acme")
    assert not curator.add_sentence(_nfd(composed), QDRANT, tenant="acme")
    f = tmp_path / "nfd.jsonl"
    f.write_text(json.dumps({"text": _nfd(composed), "skill": QDRANT}) + "\n", encoding="utf-8")
    report = curator.import_file(f, tenant="acme")
    assert (report.stored, report.already_stored) == (0, 1)
    assert [p["text"] for p in curator.list_memory(QDRANT, tenant="acme", own_only=True)] == [composed]
    [result] = mapper.map([_nfd(composed)], top=3, tenant="acme")
    assert result.text == composed
    assert [e.text for s in result.skills for e in s.evidence].count(composed) <= 1
    assert curator.relabel(_nfd(composed), QDRANT, "SQL", tenant="acme") == "relabelled"
    assert curator.remove_sentence(composed, "SQL", tenant="acme") == "removed"
    # a global sentence hidden, and shown again, by a tenant that types it decomposed
    global_text = next(p["text"] for p in curator.list_memory(QDRANT))
    assert curator.remove_sentence(global_text + " ", QDRANT, tenant="acme") == "hidden"
    assert curator.reinstate_sentence(global_text, QDRANT, tenant="acme") == "unhidden"
    # a zero-width space, soft hyphen or byte-order mark copied in with it: the same sentence (the tokenizer drops
    # them: the same vector), and nothing but them is no sentence
    assert curator.add_sentence("\ufeffPython\u200b scripting for ETL jobs\u00ad", QDRANT, tenant="acme")
    assert not curator.add_sentence("Python scripting for ETL jobs", QDRANT, tenant="acme")
    with pytest.raises(InvalidInputError, match="format characters"):
        curator.add_sentence("\u200b\u2060", QDRANT)
    with pytest.raises(InvalidInputError, match="format characters"):
        mapper.map(["\u200d"])
    # a skill's id and label, in either spelling
    curator.add_skill("custom:pâtisserie", _nfd("Pâtisserie de café"), tenant="acme")
    assert curator.add_skill(_nfd("custom:pâtisserie"), "Pâtisserie de café", tenant="acme").changed is False
    assert curator.resolve_skill("Pâtisserie de café", "acme")["skill_id"] == "custom:pâtisserie"
    assert curator.resolve_skill(_nfd("custom:pâtisserie"), "acme")["label"] == "Pâtisserie de café"


def test_a_point_stored_decomposed_before_texts_were_normalized_is_still_found(curator, store, encoder):
    legacy = _nfd("Bake a crème brûlée for the café.")
    skill = curator.resolve_skill(QDRANT)["skill_id"]
    point = memory_point_id("acme", skill, legacy)
    store.upsert(MEMORY, [point], encoder.encode([legacy]),
                 [memory_payload(LabelledSentence(legacy, skill, "curator"), "acme", "2026-01-01T00:00:00+00:00")])
    assert curator.relabel(legacy, QDRANT, "SQL", tenant="acme") == "relabelled"
    assert curator.remove_sentence(legacy, "SQL", tenant="acme") == "removed"
    assert not list(curator.list_memory(tenant="acme", own_only=True))


def test_a_taxonomy_naming_one_id_twice_in_two_spellings_is_refused_by_line(tmp_path):
    f = tmp_path / "skills.jsonl"
    f.write_text(json.dumps({"id": "custom:café", "label": "a"}) + "\n"
                 + json.dumps({"id": _nfd("custom:café") + " ", "label": "b"}) + "\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=f"{f}:2: duplicate skill id"):
        load_taxonomy(f)
    f.write_text(json.dumps({"id": "custom:blank", "label": "\u200b\u00ad"}) + "\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=f"{f}:1: field 'label' is missing or empty"):
        load_taxonomy(f)  # nothing but break hints: empty once normalized, as the service would refuse it


class _AnotherCuratorActsFirst:
    """The store, except that just before the first vector write of an edit, `act` runs: another curator's edit
    landing between this curator's read of a skill and its write (the lost-update window)."""

    def __init__(self, store, act):
        self._store, self._act = store, act

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _first(self):
        act, self._act = self._act, None
        if act:
            act()

    def upsert(self, *args, **kwargs):
        self._first()
        return self._store.upsert(*args, **kwargs)

    def update_vectors(self, *args, **kwargs):
        self._first()
        return self._store.update_vectors(*args, **kwargs)


def test_renaming_a_skill_re_embeds_it_and_keeps_what_others_did_meanwhile(curator, mapper, store):
    """A new label re-encodes the skill, and only its vector and the changed fields are written, so a retirement
    or a tenant's hide mark made by another curator between this one's read and its write both stay. A retirement
    of the tenant's own skill takes the skill's lock (it raises the revision): it waits, and lands after."""
    curator.add_skill("custom:etl", "extract transform load pipelines", tenant="acme")
    retiring: list[threading.Thread] = []

    def retire_meanwhile():
        retiring.append(threading.Thread(target=curator.retire_skill, args=("custom:etl",), kwargs={"tenant": "acme"}))
        retiring[0].start()
        retiring[0].join(0.3)
        assert retiring[0].is_alive()  # it cannot get in while the rename holds the skill

    racing = Curator(_AnotherCuratorActsFirst(store, retire_meanwhile), curator.encoder, user="bob")
    assert racing.update_skill("custom:etl", label="Apache Airflow orchestration", description="DAGs",
                               tenant="acme")["revision"] == 2
    retiring[0].join()
    [point] = store.retrieve(SKILLS, [skill_point_id("acme", "custom:etl")], with_vectors=True)
    assert point.payload["status"] == "retired" and point.payload["label"] == "Apache Airflow orchestration"
    assert point.payload["revision"] == 3
    expected = curator.encoder.encode(["Apache Airflow orchestration"])[0]
    assert float(point.vector @ expected / np.linalg.norm(point.vector)) > 0.999

    sql = curator.resolve_skill("SQL")["skill_id"]
    racing = Curator(_AnotherCuratorActsFirst(store, lambda: curator.retire_skill("SQL", tenant="beta")),
                     curator.encoder, user="bob")
    racing.update_skill("SQL", label="SQL (structured query language)")  # the global layer renames it
    try:
        [global_sql] = store.retrieve(SKILLS, [skill_point_id(GLOBAL_TENANT, sql)])
        assert hidden_tenants(global_sql.payload) == ["beta"]
        assert sql not in ids(mapper.map(["writing SQL queries"], tenant="beta")[0])
        assert sql in ids(mapper.map(["writing SQL queries"])[0])
    finally:
        curator.update_skill(sql, label="SQL")


def test_a_tenant_hiding_a_sentence_while_it_is_relabelled_globally_is_ordered(curator, store):
    """The hide that would land between the relabel's read and its delete waits for the relabel (the sentence's
    lock) and then finds the sentence moved: refused, not a mark lost with the old point."""
    sql = curator.resolve_skill("SQL")["skill_id"]
    text = next(curator.list_memory(sql))["text"]
    outcome: list[object] = []

    def hide_meanwhile():
        def hide():
            try:
                outcome.append(curator.remove_sentence(text, sql, tenant="beta"))
            except NotFoundError as exc:
                outcome.append(exc)
        thread = threading.Thread(target=hide)
        thread.start()
        thread.join(0.3)  # it cannot get in while the relabel holds the sentence
        outcome.append("waited" if thread.is_alive() else "did not wait")
        threads.append(thread)

    threads: list[threading.Thread] = []
    racing = Curator(_AnotherCuratorActsFirst(store, hide_meanwhile), curator.encoder, user="bob")
    racing.relabel(text, sql, "PostgreSQL")
    threads[0].join()
    postgres = curator.resolve_skill("PostgreSQL")["skill_id"]
    try:
        assert outcome[0] == "waited" and isinstance(outcome[1], NotFoundError), outcome
        [moved] = store.retrieve(MEMORY, [memory_point_id(GLOBAL_TENANT, postgres, text)])
        assert hidden_tenants(moved.payload) == []
        assert not store.retrieve(MEMORY, [memory_point_id(GLOBAL_TENANT, sql, text)])
        assert curator.remove_sentence(text, postgres, tenant="beta") == "hidden"  # where it is now
    finally:
        curator.relabel(text, postgres, sql)


def test_a_global_skill_added_under_a_tenants_skill_id_maps_once_for_that_tenant(curator, mapper):
    # A tenant may own an id first; the global layer does not check tenants' ids, so both can exist, and both can
    # come back from one skills query. The tenant's mapping shows the skill once, with its votes.
    sentence = "You will administer vector database clusters."
    curator.add_skill("custom:shared-id", "administer vector databases", tenant="acme")
    curator.add_skill("custom:shared-id", "administer vector database clusters")
    try:
        curator.add_sentence(NEW_SKILL_SENTENCES[0], "custom:shared-id", tenant="acme")
        for tenant in ("acme", None):
            [result] = mapper.map([sentence], top=20, tenant=tenant)
            assert ids(result).count("custom:shared-id") == 1
            assert len(ids(result)) == len(set(ids(result)))
        [own] = [s for s in mapper.map([sentence], top=20, tenant="acme")[0].skills if s.id == "custom:shared-id"]
        assert own.knn > 0 and NEW_SKILL_SENTENCES[0] in [e.text for e in own.evidence]
    finally:
        curator.retire_skill("custom:shared-id")


def test_copies_of_a_curator_load_one_encoder_however_many_edit_at_once(store, monkeypatch):
    """The service edits through a copy of one curator per key. The first edits, arriving together, load the
    model once between them, and every copy edits with it."""
    import copy

    import knnbe_qdrant._skill_curation as curation

    loaded = []

    class Counted(curation.Encoder):
        def __init__(self, *args, **kwargs):
            loaded.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(curation, "Encoder", Counted)
    shared = Curator(store, user="service")  # no encoder given: loaded at the first edit
    copies = [copy.copy(shared) for _ in range(4)]
    got: list = []
    start = threading.Barrier(len(copies))

    def first_edit(c):
        start.wait()
        got.append(c.encoder)

    threads = [threading.Thread(target=first_edit, args=(c,)) for c in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loaded) == 1 and all(e is loaded[0] for e in got) and shared.encoder is loaded[0]


def test_an_edit_naming_the_revision_it_read_never_overwrites_one_it_did_not_see(curator):
    """Two curators read a skill, both change it: the second, naming the revision it read, is refused (409 over
    HTTP) and changes nothing, where it silently overwrote the first's edit before revisions."""
    added = curator.add_skill("custom:rev", "revision skill", description="first", tenant="acme")
    assert added["revision"] == 1 and added.changed
    retried = curator.add_skill("custom:rev", "revision skill", description="first", tenant="acme")  # answer lost
    assert (retried.changed, retried["revision"]) == (False, 1)
    with pytest.raises(ConflictError, match="already exists"):  # the id, taken by another skill
        curator.add_skill("custom:rev", "another label", description="first", tenant="acme")
    [listed] = [p for p in curator.list_skills(tenant="acme", own_only=True) if p["skill_id"] == "custom:rev"]
    assert listed["revision"] == 1
    assert curator.update_skill("custom:rev", description="alice's", revision=1, tenant="acme")["revision"] == 2
    with pytest.raises(ConflictError, match="'custom:rev' is at revision 2, not 1: another edit came first"):
        curator.update_skill("custom:rev", description="bob's", label="bob's label", revision=1, tenant="acme")
    [now] = [p for p in curator.list_skills(tenant="acme") if p["skill_id"] == "custom:rev"]
    assert (now["description"], now["label"], now["revision"]) == ("alice's", "revision skill", 2)
    # A retry of an update that went through (its answer lost, say) names the revision it read, now stale. It is
    # still refused: two counters' "3 + 1" would otherwise both pass. The refusal says the skill holds what it asks.
    # Without a revision, the same retry is answered as done, and nothing is written.
    with pytest.raises(ConflictError, match="already holds what this edit asks"):
        curator.update_skill("custom:rev", description="alice's", revision=1, tenant="acme")
    again = curator.update_skill("custom:rev", description="alice's", tenant="acme")
    assert (again.changed, again["revision"], again["description"]) == (False, 2, "alice's")
    assert curator.update_skill("custom:rev", tenant="acme").changed is False  # nothing asked: nothing written
    with pytest.raises(ConflictError, match="at revision 2, not 1"):
        curator.retire_skill("custom:rev", revision=1, tenant="acme")
    retired = curator.retire_skill("custom:rev", revision=2, tenant="acme")
    assert (retired, retired.skill, retired.revision) == ("retired", "custom:rev", 3)
    with pytest.raises(ConflictError, match="already holds"):  # a retry naming the revision it read
        curator.retire_skill("custom:rev", revision=2, tenant="acme")
    retry = curator.retire_skill("custom:rev", tenant="acme")  # a retry naming none
    assert (retry, retry.revision) == ("already retired", 3)
    with pytest.raises(ConflictError, match="at revision 3, not 2"):
        curator.reinstate_skill("custom:rev", revision=2, tenant="acme")
    assert curator.reinstate_skill("custom:rev", revision=3, tenant="acme").revision == 4
    with pytest.raises(ConflictError, match="already holds"):  # a retry naming the revision it read
        curator.reinstate_skill("custom:rev", revision=3, tenant="acme")
    assert curator.reinstate_skill("custom:rev", tenant="acme") == "already active"  # a retry naming none
    for bad in (-1, True, "4", 2.0):
        with pytest.raises(InvalidInputError, match="a whole number >= 0"):
            curator.update_skill("custom:rev", description="x", revision=bad, tenant="acme")

    # A built skill is at revision 0. A tenant's hiding is its own business: it names the revision it saw, and
    # leaves it as it was.
    sql = curator.resolve_skill("SQL")
    [built] = [p for p in curator.list_skills(tenant="beta") if p["skill_id"] == sql["skill_id"]]
    seen = built["revision"]
    hidden = curator.retire_skill("SQL", revision=seen, tenant="beta")
    assert (hidden, hidden.revision) == ("hidden", seen)
    assert curator.retire_skill("SQL", tenant="beta") == "already hidden"
    unhidden = curator.reinstate_skill("SQL", revision=seen, tenant="beta")
    assert (unhidden, unhidden.revision) == ("unhidden", seen)
    changed = curator.update_skill("SQL", description="the global layer's", revision=seen)
    with pytest.raises(ConflictError):  # the global skill changed since beta read it
        curator.retire_skill("SQL", revision=seen, tenant="beta")
    assert changed["revision"] == seen + 1


@pytest.fixture(params=["process", "lease"])
def item_locks(request, store, monkeypatch):
    """The item locks edits take: this process's (embedded, local mode) or, on qdrant-client, the leases a server
    store uses across processes and replicas (local mode implements the same conditional upsert)."""
    if request.param == "lease":
        if store.backend != "qdrant-local":
            pytest.skip("leases are qdrant-client's")
        from knnbe_qdrant.store.locks import lease

        monkeypatch.setattr(store, "item_lock", lambda *key: lease(store, tuple(key)))
    return request.param


def test_curators_incrementing_one_skill_at_once_lose_no_increment(curator, item_locks):
    """The lost-update race itself: 4 curators each read a skill's counter (its description) and write it plus
    one, naming the revision read, retrying when refused. Every increment lands, and the revision counts them.
    Edits that name no revision still raise it once each, under the skill's lock."""
    curator.add_skill("custom:counter", "counter skill", description="0", tenant="acme")
    errors: list[BaseException] = []

    def increment(times: int) -> None:
        try:
            for _ in range(times):
                while True:
                    [p] = [p for p in curator.list_skills(tenant="acme", own_only=True)
                           if p["skill_id"] == "custom:counter"]
                    try:
                        curator.update_skill("custom:counter", description=str(int(p["description"]) + 1),
                                             revision=p["revision"], tenant="acme")
                        break
                    except ConflictError:
                        continue
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=increment, args=(5,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    [p] = [p for p in curator.list_skills(tenant="acme", own_only=True) if p["skill_id"] == "custom:counter"]
    assert (p["description"], p["revision"]) == ("20", 21)

    blind = [threading.Thread(target=curator.update_skill, args=("custom:counter",),
                              kwargs={"description": f"blind {i}", "tenant": "acme"}) for i in range(6)]
    for t in blind:
        t.start()
    for t in blind:
        t.join()
    [p] = [p for p in curator.list_skills(tenant="acme", own_only=True) if p["skill_id"] == "custom:counter"]
    assert p["revision"] == 27


def test_a_tenant_adds_no_more_than_its_quota_however_it_adds(curator, store, tmp_path):
    """One tenant cannot fill the store the others map against: its own skills and sentences stop at its quota,
    by any way of adding (one sentence, a relabelled copy of a global one, an import), and a refused add writes
    nothing. Removing makes room; what is stored already is not refused again; other tenants and the global
    layer are not counted against it."""
    curator.quota = Quota(skills=2, sentences=3)
    curator.add_skill("acme:q1", "quota skill one", tenant="acme")
    curator.add_skill("acme:q2", "quota skill two", tenant="acme")
    with pytest.raises(QuotaExceededError, match="'acme' holds 2 skills of its own and may hold 2"):
        curator.add_skill("acme:q3", "quota skill three", tenant="acme")
    curator.retire_skill("acme:q2", tenant="acme")
    with pytest.raises(QuotaExceededError, match="retired skills count too"):  # a retired skill stays stored
        curator.add_skill("acme:q3", "quota skill three", tenant="acme")
    curator.reinstate_skill("acme:q2", tenant="acme")
    texts = [f"Quota sentence number {i} about vector search." for i in range(6)]
    for text in texts[:3]:
        assert curator.add_sentence(text, "acme:q1", tenant="acme")
    with pytest.raises(QuotaExceededError, match="holds 3 memory sentences of its own and may hold 3"):
        curator.add_sentence(texts[3], "acme:q1", tenant="acme")
    assert curator.add_sentence(texts[0], "acme:q1", tenant="acme") is False  # stored already: not an add
    curator.relabel(texts[0], "acme:q1", "acme:q2", tenant="acme")  # its own sentence moves: no more of them
    sql = curator.resolve_skill("SQL")["skill_id"]
    global_text = next(curator.list_memory(sql))["text"]
    with pytest.raises(QuotaExceededError):  # a relabelled global sentence would be a copy of its own
        curator.relabel(global_text, sql, "acme:q1", tenant="acme")
    assert global_text in [p["text"] for p in curator.list_memory(sql, tenant="acme")]  # not hidden either
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": t, "skill": "acme:q2"}) + "\n" for t in texts[3:]))
    with pytest.raises(QuotaExceededError, match="stopped after storing 0 rows"):
        curator.import_file(rows, tenant="acme")
    assert curator.tenants()["acme"]["memory"] == 3 and curator.tenants()["acme"]["skills"] == 2
    assert curator.remove_sentence(texts[1], "acme:q1", tenant="acme") == "removed"
    with pytest.raises(QuotaExceededError, match="stopped after storing 1 rows"):  # one chunk fits, the next not
        curator.import_file(rows, tenant="acme", chunk=1)
    assert curator.tenants()["acme"]["memory"] == 3
    curator.add_skill("beta:q1", "beta quota skill", tenant="beta")
    assert curator.add_sentence(texts[5], "beta:q1", tenant="beta")
    assert curator.add_sentence("A global sentence, whatever the tenants' quota.", sql)
    curator.remove_sentence("A global sentence, whatever the tenants' quota.", sql)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(InvalidInputError, match="a whole number >= 1"):
            Quota(sentences=bad)


def test_a_tenants_concurrent_adds_stop_exactly_at_its_quota(curator, item_locks):
    """The count and the write are one step under the tenant's quota lock: eight curators adding at once into room
    for three get exactly three in."""
    curator.quota = Quota(sentences=3)
    curator.add_skill("acme:race", "quota race skill", tenant="acme")
    outcomes: list[object] = []
    lock = threading.Lock()

    def add(i: int) -> None:
        try:
            result: object = curator.add_sentence(f"Racing for the last places in the quota, {i}.", "acme:race",
                                                  tenant="acme")
        except QuotaExceededError as exc:
            result = exc
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(str, outcomes)).count("True") == 3, outcomes
    assert sum(isinstance(o, QuotaExceededError) for o in outcomes) == 5
    assert curator.tenants()["acme"]["memory"] == 3


def test_a_tenant_at_its_quota_sending_adds_does_not_count_its_points_at_each(curator, store, monkeypatch):
    """Counting a tenant's points holds Python's lock for milliseconds per 10,000 points (Edge's binding), so adds
    that are all refused, sent by a tenant at its quota, counted at each one and took that lock from every other
    tenant's mapping. The count is kept a second: 20 refused adds count once; points another replica added are seen
    at the next count."""
    curator.quota = Quota(sentences=2)
    curator.add_skill("acme:spam", "quota spam skill", tenant="acme")
    curator.add_sentence("The first of two sentences.", "acme:spam", tenant="acme")
    curator.add_sentence("The second of two sentences.", "acme:spam", tenant="acme")
    counts = []
    real = store.count
    monkeypatch.setattr(store, "count", lambda *a, **kw: (counts.append(1), real(*a, **kw))[1])
    for i in range(20):
        with pytest.raises(QuotaExceededError):
            curator.add_sentence(f"Refused sentence {i}.", "acme:spam", tenant="acme")
    assert len(counts) <= 2, len(counts)  # one, or two if the second ran out meanwhile
    curator.remove_sentence("The second of two sentences.", "acme:spam", tenant="acme")  # room at once
    assert curator.add_sentence("Room again after a removal.", "acme:spam", tenant="acme")
    # Another replica (a point written straight to the store) is seen at the next count, a second later.
    from knnbe_qdrant._build import memory_payload
    from knnbe_qdrant._data import LabelledSentence
    from knnbe_qdrant._schema import memory_point_id

    curator.remove_sentence("Room again after a removal.", "acme:spam", tenant="acme")
    text = "Written by another replica."
    skill_id = curator.resolve_skill("acme:spam", "acme")["skill_id"]
    store.upsert(MEMORY, [memory_point_id("acme", skill_id, text)], curator.encoder.encode([text]),
                 [memory_payload(LabelledSentence(text, skill_id, "replica"), "acme", "2026-12-07T00:00:00+00:00")])
    import time

    time.sleep(1.05)
    with pytest.raises(QuotaExceededError, match="holds 2 memory sentences"):
        curator.add_sentence("One more than the quota.", "acme:spam", tenant="acme")
