"""Migrations on every backend: pending schema steps, a model change by re-embedding into new collections with an
atomic swap, rollback, and resuming after a crash half-way."""

from __future__ import annotations

import time

import numpy as np
import pytest

from knnbe_qdrant import (
    Curator,
    Encoder,
    ModelMismatchError,
    SkillMapper,
    StoreCorruptError,
    StoreError,
    default_memory,
)
from knnbe_qdrant import _schema as S
from knnbe_qdrant import migrations as M
from knnbe_qdrant._schema import MEMORY, SCHEMA_VERSION, SKILLS
from knnbe_qdrant.migrations.reembed import reembed, rollback
from tests.helpers import BACKENDS, build_small

SENTENCE = ["Strong programming skills in Python."]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path, encoder, small_skills):
    skills = small_skills[:25]
    s = build_small(request.param, tmp_path, encoder, skills, default_memory(skills)[:300])
    yield s
    s.close()


@pytest.fixture(scope="module")
def other_encoder(encoder, tmp_path_factory):
    """A second, real model: the bundled MiniLM run through sentence-transformers under another name would be the
    same vectors, so the test uses a genuinely different local model directory (MiniLM with its pooling switched
    to CLS), which changes every vector."""
    import json
    import shutil

    from knnbe_qdrant.encoding import local_model_dir

    source = local_model_dir(encoder.name)
    # In pytest's own temporary folders, which it prunes: a folder of tempfile's own stayed behind, 174 MB a run.
    target = tmp_path_factory.mktemp("model") / "minilm-cls"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("onnx"))
    pooling = json.loads((target / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (target / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return Encoder(str(target))


def test_new_store_has_every_migration_applied(store):
    assert store.manifest.schema_version == SCHEMA_VERSION
    assert M.pending(store) == []
    assert M.migrate(store) == []


def test_old_schema_is_refused_until_migrated_and_migrate_is_idempotent(store, encoder):
    manifest = store.manifest
    manifest.schema_version, manifest.migrations = 1, manifest.migrations[:1]
    store._write_manifest(manifest)
    ids = [r.id for r in store.scroll(SKILLS, payload=False)][:5]
    store.set_payload(SKILLS, ids, {"status": None})  # as a v1 store: no explicit status
    with pytest.raises(StoreCorruptError, match="knnbe-qdrant migrate"):
        SkillMapper(store, encoder)
    assert M.migrate(store, dry_run=True) == [f"{m.id}: {m.description}" for m in M.MIGRATIONS[1:]]
    assert store.manifest.schema_version == 1  # a dry run changes nothing
    assert len(M.migrate(store)) == len(M.MIGRATIONS) - 1
    assert M.migrate(store) == []
    assert all(r.payload.get("status") == "active" for r in store.retrieve(SKILLS, ids))
    assert SkillMapper(store, encoder).map(SENTENCE)[0].skills


def test_model_change_reembeds_swaps_atomically_and_rolls_back(store, encoder, other_encoder):
    before = SkillMapper(store, encoder, exact=True).map(SENTENCE)[0]
    counts = {c: store.count(c) for c in (SKILLS, MEMORY)}
    plan = reembed(store, other_encoder, dry_run=True)
    assert "generation 2" in plan[0] and store.manifest.generation == 1
    reembed(store, other_encoder, progress=False)
    m = store.manifest
    assert (m.model, m.generation, m.previous["model"]) == (other_encoder.name, 2, encoder.name)
    assert {c: store.count(c) for c in (SKILLS, MEMORY)} == counts
    with pytest.raises(ModelMismatchError):
        SkillMapper(store, encoder)  # the old model is refused: vectors are never mixed
    after = SkillMapper(store, other_encoder, exact=True).map(SENTENCE)[0]
    assert [s.score for s in after.skills] != pytest.approx([s.score for s in before.skills])
    x = other_encoder.encode(SENTENCE)[0]
    top = after.skills[0]
    assert top.bi_encoder == pytest.approx(float(x @ other_encoder.encode([top.label])[0]), abs=1e-4)
    # An edit made since the swap lives only in the new generation: rolling back would lose it, so it is refused.
    time.sleep(1.1)  # the swap and the edit have one-second timestamps
    Curator(store, other_encoder, user="t").add_sentence("Edited after the swap", after.skills[0].id, tenant="acme")
    with pytest.raises(StoreError, match="1 skills or sentences were added or changed since the swap"):
        rollback(store)
    rollback(store, discard_edits=True)
    assert (store.manifest.model, store.manifest.generation) == (encoder.name, 1)
    again = SkillMapper(store, encoder, exact=True).map(SENTENCE)[0]
    assert [s.id for s in again.skills] == [s.id for s in before.skills]


def test_reembedding_resumes_after_a_crash(store, encoder, other_encoder):
    calls = {"n": 0}
    original = other_encoder.encode

    def crash_on_second_chunk(texts, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed half-way")
        return original(texts, **kw)

    other_encoder.encode = crash_on_second_chunk
    try:
        with pytest.raises(KeyboardInterrupt):
            reembed(store, other_encoder, progress=False)
    finally:
        other_encoder.encode = original
    assert store.manifest.pending_reembed == {"model": other_encoder.name, "generation": 2}
    assert store.manifest.model == encoder.name  # still serving the old generation, untouched
    assert SkillMapper(store, encoder).map(SENTENCE)[0].skills
    encoded: list[int] = []
    other_encoder.encode = lambda texts, **kw: (encoded.append(len(texts)), original(texts, **kw))[1]
    try:
        reembed(store, other_encoder, progress=False)
    finally:
        other_encoder.encode = original
    total = store.count(SKILLS) + len({r.payload["text"] for r in store.scroll(MEMORY, payload=["text"])})
    assert sum(encoded) < total  # what was stored before the crash was not encoded again
    assert store.manifest.model == other_encoder.name and store.manifest.pending_reembed is None
    np.testing.assert_equal(store.count(SKILLS), 25)


def test_hide_lists_of_schema_2_become_hide_keys(store, encoder):
    """A schema-2 store kept each tenant's hide marks in one shared `hidden_for` list; migration 0003 turns them into
    one key per tenant, and every tenant sees exactly what it saw before."""
    sql = next(r for r in store.scroll(SKILLS) if r.payload["label"] == "SQL")
    sentences = list(store.scroll(MEMORY, where={"skill_id": sql.payload["skill_id"]}))[:2]
    store.set_payload(SKILLS, [sql.id], {"hidden_for": ["acme", "beta.co"]})
    store.set_payload(MEMORY, [r.id for r in sentences], {"hidden_for": ["acme"]})
    manifest = store.manifest
    manifest.schema_version, manifest.migrations = 2, manifest.migrations[:2]
    store._write_manifest(manifest)
    with pytest.raises(StoreCorruptError, match="knnbe-qdrant migrate"):
        SkillMapper(store, encoder)
    assert len(M.migrate(store)) == 1
    assert M.migrate(store) == []
    [skill] = store.retrieve(SKILLS, [sql.id])
    assert "hidden_for" not in skill.payload and S.hidden_tenants(skill.payload) == ["acme", "beta.co"]
    assert all(S.hidden_tenants(r.payload) == ["acme"] for r in store.retrieve(MEMORY, [r.id for r in sentences]))
    curator = Curator(store, encoder)
    assert {t: v["hidden"] for t, v in curator.tenants().items()} == {"acme": 3, "beta.co": 1}
    for tenant in ("acme", "beta.co"):
        assert sql.payload["skill_id"] not in {p["skill_id"] for p in curator.list_skills(tenant=tenant)}
    assert sql.payload["skill_id"] in {p["skill_id"] for p in curator.list_skills(tenant="gamma")}
    assert SkillMapper(store, encoder).map(SENTENCE)[0].skills
