"""kNNBE mapping end to end, with the real bundled MiniLM, on a small real slice of ESCO, on every backend."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from knnbe_qdrant import (
    Curator,
    InvalidInputError,
    ModelMismatchError,
    ScoringParams,
    SkillMapper,
    build_store,
    default_memory,
    load_taxonomy,
)
from knnbe_qdrant._decompose import pieces_to_map
from knnbe_qdrant._schema import MEMORY, SKILLS

SENTENCES = [
    "Strong programming skills in Python and experience writing SQL queries.",
    "You will provide nursing care to patients on the ward.",
    "Fluent English and German are required.",
    "Prepare and cook fish and meat dishes for our guests.",
]


@pytest.fixture(scope="module")
def mappers(built_store, encoder):
    # kNNBE itself, one embedding per sentence (decomposition, which merges in the pieces' rankings: test_decompose)
    return SkillMapper(built_store, encoder, exact=True, decompose=False)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_results_are_ranked_and_follow_the_formula(mappers):
    params = mappers.params
    for result in mappers.map(SENTENCES, top=10):
        assert len(result.skills) == 10
        scores = [s.score for s in result.skills]
        assert scores == sorted(scores, reverse=True)
        for s in result.skills:
            assert s.score == pytest.approx(params.lam * s.bi_encoder + (1 - params.lam) * s.knn, abs=1e-9)
            assert 0.0 <= s.knn <= 1.0
        assert sum(s.knn for s in result.skills) <= 1.0 + 1e-9


def test_expected_skills_come_first(mappers):
    top3 = [[s.label for s in r.skills[:3]] for r in mappers.map(SENTENCES, top=3)]
    assert "Python (computer programming)" in top3[0] or "SQL" in top3[0]
    assert {"implement nursing care", "plan nursing care"} & set(top3[1])
    assert {"English", "German"} & set(top3[2])
    assert {"cook meat dishes", "cook fish"} & set(top3[3])


def test_knn_only_skills_are_found_and_get_their_exact_bi_encoder_score(built_store, encoder, small_skills):
    # A small λ lets the vote outweigh b, so skills outside the bi-encoder's top reach the results.
    mapper = SkillMapper(built_store, encoder, ScoringParams(lam=0.1, k=32, tau=0.1), exact=True, decompose=False)
    labels = {s.id: s.label for s in small_skills}
    for sentence, top in itertools.product(SENTENCES, (2, 5, 10)):
        [result] = mapper.map([sentence], top=top)
        [bi_only] = mapper.map([sentence], top=top, mode="bi-encoder")
        knn_only = [s for s in result.skills if s.id not in {b.id for b in bi_only.skills}]
        x = encoder.encode([sentence])[0]
        vectors = encoder.encode([labels[s.id] for s in result.skills])
        for s, v in zip(result.skills, vectors):
            assert s.bi_encoder == pytest.approx(cosine(x, v), abs=1e-4)
        if knn_only:
            break
    assert knn_only, "no sentence had a skill found by the kNN vote alone"
    assert all(s.knn > 0 and s.bi_encoder != 0.0 for s in knn_only)


def test_default_candidate_count_gives_the_same_top_as_many_more_candidates(built_store, encoder):
    mapper = SkillMapper(built_store, encoder, exact=True)
    default = mapper.map(SENTENCES, top=10)
    wide_params = dataclasses.replace(mapper.params, n_candidates=200)
    wide = SkillMapper(built_store, encoder, wide_params, exact=True).map(SENTENCES, top=10)
    for a, b in zip(default, wide):
        assert [s.id for s in a.skills] == [s.id for s in b.skills]
        assert [s.score for s in a.skills] == pytest.approx([s.score for s in b.skills])


def test_evidence_are_the_neighbours_that_voted(mappers, encoder, small_memory):
    labelled = {(m.text, m.skill_id) for m in small_memory}
    [result] = mappers.map([SENTENCES[1]], top=5)
    x = encoder.encode([SENTENCES[1]])[0]
    voted = [s for s in result.skills if s.knn > 0]
    assert voted, "no skill got a vote"
    for s in voted:
        assert s.evidence
        for e in s.evidence:
            assert (e.text, s.id) in labelled
        e = s.evidence[0]
        assert e.similarity == pytest.approx(cosine(x, encoder.encode([e.text])[0]), abs=1e-4)
    for s in result.skills:
        assert (s.knn > 0) == bool(s.evidence)


def test_modes_share_the_bi_encoder_part(mappers):
    knnbe = mappers.map(SENTENCES[:2], mode="knnbe", top=50)
    bi = mappers.map(SENTENCES[:2], mode="bi-encoder", top=10)
    knn = mappers.map(SENTENCES[:2], mode="knn", top=10)
    for kr, br, nr in zip(knnbe, bi, knn):
        b_of = {s.id: s.bi_encoder for s in kr.skills}
        assert all(s.knn == 0.0 and s.score == s.bi_encoder and not s.evidence for s in br.skills)
        assert [s.bi_encoder for s in br.skills] == sorted((s.bi_encoder for s in br.skills), reverse=True)
        for s in br.skills:
            if s.id in b_of:
                assert s.bi_encoder == pytest.approx(b_of[s.id], abs=1e-6)
        assert all(s.score == pytest.approx(s.knn) for s in nr.skills)


def test_one_query_per_collection_per_batch(built_store, encoder):
    calls: list[tuple[str, str, int]] = []

    class Counting:
        def __getattr__(self, name):
            attr = getattr(built_store, name)
            if name in ("query_batch", "query_keys_batch", "retrieve"):
                def counted(collection, arg, *a, **kw):
                    calls.append(("retrieve" if name == "retrieve" else "query", collection, len(arg)))
                    return attr(collection, arg, *a, **kw)
                return counted
            return attr

    mapper = SkillMapper(Counting(), encoder, ScoringParams(n_candidates=5), exact=True, decompose=False)
    sentences = SENTENCES * 5
    mapper.map(sentences, batch_size=len(sentences))
    queries = [c for c in calls if c[0] == "query"]
    assert sorted(c[1] for c in queries) == [MEMORY, SKILLS]
    assert all(c[2] == len(sentences) for c in queries)
    # Memory: at most one retrieve, the payloads of points not seen before (the kNN query returns ids and scores
    # only). Skills: the payloads of those only the vote found (may this tenant see them?), and at most one more
    # for the vectors not yet cached, theirs and the hits'.
    retrieves = [c[1] for c in calls if c[0] == "retrieve"]
    assert retrieves.count(MEMORY) <= 1 and retrieves.count(SKILLS) <= 2
    calls.clear()
    mapper.map(sentences, batch_size=len(sentences))  # the same sentences again: every payload and vector is known
    assert [c[1] for c in calls if c[0] == "retrieve"] in ([], [SKILLS])
    assert mapper.memory_payloads.hits > 0
    # With decomposition, one more query per collection, for the pieces of the sentences the memory does not know.
    n_pieces = sum(map(len, pieces_to_map(mapper.map(sentences), mapper.merge_params)))
    calls.clear()
    mapper.map(sentences, batch_size=len(sentences), decompose=True)
    queries = [c[1:] for c in calls if c[0] == "query"]
    assert n_pieces > 0 and sorted(queries) == sorted([(MEMORY, len(sentences)), (SKILLS, len(sentences)),
                                                       (MEMORY, n_pieces), (SKILLS, n_pieces)])


def test_a_batch_gives_what_each_sentence_gives_alone(mappers):
    together = mappers.map(SENTENCES, top=10)
    for sentence, batched in zip(SENTENCES, together):
        [alone] = mappers.map([sentence], top=10)
        assert [s.id for s in alone.skills] == [s.id for s in batched.skills]
        assert [s.score for s in alone.skills] == pytest.approx([s.score for s in batched.skills], abs=1e-6)


def test_bad_sentences_are_refused_by_position(mappers):
    with pytest.raises(InvalidInputError, match="#1 is empty"):
        mappers.map(["fine", "   "])
    with pytest.raises(InvalidInputError, match="not one string"):
        mappers.map("a single string")
    with pytest.raises(InvalidInputError, match="mode"):
        mappers.map(["fine"], mode="rerank")
    assert mappers.map([]) == []


def test_another_model_is_refused(built_store, encoder):
    with pytest.raises(ModelMismatchError, match="all-MiniLM-L6-v2"):
        built_store.check_model("sentence-transformers/all-mpnet-base-v2", 768)


def test_rebuild_is_idempotent_and_encodes_nothing(built_store, encoder, small_skills, small_memory):
    before = {c: built_store.count(c) for c in (SKILLS, MEMORY)}
    encoded: list[int] = []

    class CountingEncoder:
        name, dimension = encoder.name, encoder.dimension

        def encode(self, texts, **kw):
            encoded.append(len(texts))
            return encoder.encode(texts, **kw)

    manifest = build_store(built_store, CountingEncoder(), skills=small_skills, memory=small_memory, progress=False)
    assert manifest.state == "ready"
    assert {c: built_store.count(c) for c in (SKILLS, MEMORY)} == before
    assert encoded == []


def test_backends_agree_on_top10_with_exact_search(built_stores, encoder):
    results = {b: SkillMapper(store, encoder, exact=True).map(SENTENCES, top=10) for b, store in built_stores.items()}
    reference = results.pop("embedded")
    assert results, "only one backend ran"
    for backend, other in results.items():
        for a, b in zip(reference, other):
            assert [s.id for s in a.skills] == [s.id for s in b.skills], backend
            for sa, sb in zip(a.skills, b.skills):
                assert sa.score == pytest.approx(sb.score, abs=1e-5)
                assert sa.bi_encoder == pytest.approx(sb.bi_encoder, abs=1e-5)
                assert sa.knn == pytest.approx(sb.knn, abs=1e-5)


def test_the_payload_cache_follows_live_curation(built_store, encoder):
    """The vote reads neighbours' skills and texts from a cache keyed by content-addressed ids: edits between two
    mappings by the same mapper show at once (a removed point is not returned, a relabelled one is a new id)."""
    from knnbe_qdrant import Curator

    mapper = SkillMapper(built_store, encoder, exact=True)
    curator = Curator(built_store, encoder, user="cache-test")
    probe = ["Tuning slow PostgreSQL queries with careful indexes"]
    text = "Tuning slow PostgreSQL queries with careful indexes, every day"

    def evidence(skill_label: str) -> set[str]:
        [result] = mapper.map(probe, top=20, tenant="cachet")
        return {e.text for s in result.skills if s.label == skill_label for e in s.evidence}

    mapper.map(probe, top=20, tenant="cachet")  # warm the cache
    try:
        curator.add_sentence(text, "PostgreSQL", tenant="cachet")
        assert text in evidence("PostgreSQL")
        curator.relabel(text, "PostgreSQL", "SQL", tenant="cachet")
        assert text not in evidence("PostgreSQL") and text in evidence("SQL")
        curator.remove_sentence(text, "SQL", tenant="cachet")
        assert text not in evidence("SQL")
        hidden = next(iter(evidence("SQL") - {text}))
        curator.remove_sentence(hidden, "SQL", tenant="cachet")  # a global sentence: hidden for this tenant
        assert hidden not in evidence("SQL")
        assert mapper.memory_payloads.hits > 0
    finally:
        curator.delete_tenant("cachet")


@pytest.mark.parametrize("backend", ["embedded", "qdrant-local"])
def test_building_again_with_a_new_source_adds_it_and_names_it(backend, tmp_path, encoder, small_skills):
    """A store built before a source joined the default memory (esco_transversal, 2026-12-06) gains that source's
    sentences when `build` runs again, and its manifest names every source it holds; building with fewer sources
    removes nothing and forgets no name."""
    from knnbe_qdrant._data import ESCO_ALT_LABELS, ESCO_TRANSVERSAL, TRANSVERSAL
    from tests.helpers import make_store

    skills = small_skills[:60] + [s for s in load_taxonomy() if s.reuse_level == TRANSVERSAL][:5]
    store = make_store(backend, tmp_path)
    try:
        build_store(store, encoder, skills=skills, memory_sources=(ESCO_ALT_LABELS,), progress=False)
        before = store.count(MEMORY)
        build_store(store, encoder, skills=skills, memory_sources=(ESCO_ALT_LABELS, ESCO_TRANSVERSAL), progress=False)
        added = len(default_memory(skills, (ESCO_TRANSVERSAL,)))
        assert added > 0 and store.count(MEMORY) == before + added
        assert store.manifest.sources["memory"] == f"{ESCO_ALT_LABELS},{ESCO_TRANSVERSAL}"
        assert store.manifest.counts[MEMORY] == before + added and store.manifest.state == "ready"
        build_store(store, encoder, skills=skills, memory_sources=(ESCO_TRANSVERSAL,), progress=False)
        assert store.count(MEMORY) == before + added
        assert store.manifest.sources["memory"] == f"{ESCO_ALT_LABELS},{ESCO_TRANSVERSAL}"
    finally:
        store.close()


def test_points_another_program_wrote_without_the_fields_are_passed_over_not_a_failure(built_store, encoder):
    # A skill point without a label (or with a number for it, or no id) written into the collection by hand or by
    # another program failed every map that met it, every tenant's, with a KeyError; a memory point without its
    # sentence voted with "None" as its evidence.
    import uuid

    from knnbe_qdrant._schema import F_LABEL, F_REVISION, F_SKILL_ID, F_TENANT, F_TEXT, GLOBAL_TENANT, skill_point_id

    mapper = SkillMapper(built_store, encoder, exact=True)
    curator = Curator(built_store, encoder, user="test")  # opened first: its check of a sample calls these damage
    sentence = SENTENCES[0]
    before = [(s.id, s.label) for s in mapper.map([sentence], top=10)[0].skills]
    python = next(sid for sid, label in before if label == "Python (computer programming)")
    vector = encoder.encode([sentence])
    foreign = {SKILLS: [{F_TENANT: GLOBAL_TENANT, F_SKILL_ID: "custom:no-label"},
                        {F_TENANT: GLOBAL_TENANT, F_SKILL_ID: "custom:number", F_LABEL: 7},
                        {F_TENANT: GLOBAL_TENANT, F_SKILL_ID: None, F_LABEL: "no id"}],
               MEMORY: [{F_TENANT: GLOBAL_TENANT, F_SKILL_ID: python},
                        {F_TENANT: GLOBAL_TENANT, F_SKILL_ID: 5, F_TEXT: "a number for a skill"}]}
    ids = {c: [str(uuid.uuid4()) for _ in payloads] for c, payloads in foreign.items()}
    # and a sound sentence voting for a skill whose point, at that skill's own id, lost its label
    damaged, voter = skill_point_id(GLOBAL_TENANT, "custom:damaged"), str(uuid.uuid4())
    try:
        for collection, payloads in foreign.items():
            built_store.upsert(collection, ids[collection], np.repeat(vector, len(payloads), axis=0), payloads)
        [result] = mapper.map([sentence], top=10)
        assert [(s.id, s.label) for s in result.skills] == before
        assert all(isinstance(e.text, str) and e.text != "None" for s in result.skills for e in s.evidence)
        built_store.upsert(SKILLS, [damaged], vector, [{F_TENANT: GLOBAL_TENANT}])
        built_store.upsert(MEMORY, [voter], vector, [{F_TENANT: GLOBAL_TENANT, F_SKILL_ID: "custom:damaged",
                                                      F_TEXT: "a sentence voting for a damaged skill"}])
        [result] = mapper.map([sentence], top=10)
        assert python in [s.id for s in result.skills] and "custom:damaged" not in [s.id for s in result.skills]
        # Listing and editing meet them too: a revision that is no number failed every listing of the skills.
        built_store.set_payload(SKILLS, [damaged], {F_REVISION: "x", F_SKILL_ID: "custom:damaged", F_LABEL: "d"})
        listed = {p[F_SKILL_ID]: p for p in curator.list_skills() if isinstance(p.get(F_SKILL_ID), str)}
        assert listed["custom:damaged"][F_REVISION] == 0 and python in listed
        assert curator.update_skill("custom:damaged", label="damaged, then edited")[F_REVISION] == 1
    finally:
        for collection in foreign:
            built_store.delete(collection, ids[collection])
        built_store.delete(SKILLS, [damaged])
        built_store.delete(MEMORY, [voter])
