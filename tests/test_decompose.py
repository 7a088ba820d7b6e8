"""Query decomposition: which pieces a sentence splits into, how piece rankings merge, and the mapper using it."""

from __future__ import annotations

import re

import pytest

from knnbe_qdrant import InvalidInputError, ScoringParams, SkillMapper
from knnbe_qdrant._decompose import (
    MAX_PIECES,
    MergeParams,
    clause_of_tokens,
    collapse,
    expand,
    merge,
    pieces,
    pieces_to_map,
)
from knnbe_qdrant._results import SentenceResult, SkillMatch
from knnbe_qdrant.evaluation import run_eval
from knnbe_qdrant.evaluation.tuning import save_params, tune

MULTI = "You will design and maintain REST APIs in Python and write efficient SQL queries against PostgreSQL."


def test_a_multi_skill_sentence_splits_into_pieces_that_name_something():
    # "You will design" names no skill of its own: it brought "think creatively" and "develop design plans"
    assert pieces(MULTI) == ["maintain REST APIs in Python", "write efficient SQL queries against PostgreSQL"]
    assert pieces("Fluent English; German, such as spoken German, is an advantage.") == [
        "Fluent English", "spoken German"]
    assert pieces("We are looking for a nurse with experience in wound care and patient education.") == [
        "experience in wound care", "patient education"]
    assert pieces("Knowledge of C++ and C# or Node.js and React.js, as well as ASP.NET Core") == [
        "Knowledge of C++", "ASP.NET Core"]
    assert pieces("Programming in Python") == []  # nothing to split: the whole sentence alone


def test_a_list_pasted_as_one_sentence_maps_its_first_pieces_only():
    pasted = ", ".join(f"skill number {i}" for i in range(50_000))
    assert pieces(pasted) == [f"skill number {i}" for i in range(MAX_PIECES)]
    assert pieces("Python and SQL, Python and SQL, Python and SQL") == []  # one-word pieces, however many


def ranking(result: SentenceResult) -> list:
    """What a result ranks, with its scores compared up to float noise (qdrant-client's local mode and the batched
    matrix products sum in an order that varies with the batch)."""
    return [(s.id, s.piece, pytest.approx(s.score, abs=1e-6)) for s in result.skills]


def match(sid: str, score: float) -> SkillMatch:
    return SkillMatch(id=sid, label=sid, score=score, bi_encoder=score, knn=0.0)


def test_each_token_lies_in_the_clause_that_names_something():
    def words(text):
        return [(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", text)]

    text = "Fluency in English is required; German is an advantage."
    clause = clause_of_tokens(text, words(text))
    tokens = [text[a:b] for a, b in words(text)]
    assert dict(zip(tokens, clause.tolist())) == {
        "Fluency": 0, "in": 0, "English": 0, "is": 1, "required": 0, ";": -1, "German": 1, "an": 1,
        "advantage": 1, ".": -1}
    # "You will design" names nothing: its tokens are in no clause, and the two that do are numbered 0 and 1.
    got = clause_of_tokens(MULTI, words(MULTI)).tolist()
    assert got[:3] == [-1, -1, -1] and set(got) == {-1, 0, 1}
    first = [MULTI[a:b] for (a, b), c in zip(words(MULTI), got) if c == 0]
    assert first == ["maintain", "REST", "APIs", "in", "Python"]
    # One clause (the sentence does not split, or only one piece names something): no clauses.
    assert (clause_of_tokens("Programming in Python", words("Programming in Python")) == -1).all()
    assert (clause_of_tokens("You will design and test", words("You will design and test")) == -1).all()
    assert clause_of_tokens("", []).tolist() == []


def test_merge_takes_the_larger_of_the_whole_and_the_weighted_best_piece():
    whole = SentenceResult("a and b", [match("a", 0.5), match("x", 0.3)])
    parts = [SentenceResult("piece a", [match("a", 0.55), match("b", 0.45)]),
             SentenceResult("piece b", [match("b", 0.7)])]
    merged = merge(whole, parts, top=3, params=MergeParams(weight=0.8, protect=0))
    assert [(s.id, round(s.score, 3), s.piece) for s in merged.skills] == [
        ("b", 0.56, "piece b"), ("a", 0.5, None), ("x", 0.3, None)]
    assert merged.to_dict()["skills"][0]["piece"] == "piece b" and "piece" not in merged.to_dict()["skills"][1]


def test_merge_keeps_the_whole_sentences_best_skills_first():
    whole = SentenceResult("a and b", [match("a", 0.5), match("x", 0.3), match("y", 0.2)])
    parts = [SentenceResult("piece a", [match("a", 0.9), match("b", 0.7)]),
             SentenceResult("piece y", [match("y", 0.3)])]
    merged = merge(whole, parts, top=3, params=MergeParams(weight=0.8, protect=1))
    # "a" stays first and takes the best merged score, so scores fall down the ranking; its parts stay its own.
    assert [(s.id, round(s.score, 3), s.piece) for s in merged.skills] == [
        ("a", 0.56, None), ("b", 0.56, "piece a"), ("x", 0.3, None)]
    assert merged.skills[0].bi_encoder == 0.5
    assert [s.id for s in merge(whole, parts, top=2, params=MergeParams(protect=3)).skills] == ["a", "x"]


def test_a_sentence_the_memory_knows_stays_whole():
    parts = [SentenceResult("piece b", [match("b", 0.9)])]
    for nearest, merged in [(0.9, ["a", "x"]), (0.74, ["a", "b"]), (None, ["a", "b"])]:
        whole = SentenceResult("a and b", [match("a", 0.5), match("x", 0.3)], nearest_memory=nearest)
        result = merge(whole, parts, top=2, params=MergeParams(weight=0.8, protect=1, gate=0.75))
        assert [s.id for s in result.skills] == merged and result.nearest_memory == nearest


def test_the_mapper_finds_the_skill_a_single_embedding_drowns(built_store, encoder):
    mapper = SkillMapper(built_store, encoder, exact=True)
    plain = mapper.map([MULTI], top=10, decompose=False)[0]
    decomposed = mapper.map([MULTI], top=10, decompose=True)[0]
    rank = {s.id: i for i, s in enumerate(decomposed.skills)}
    python = next(s for s in decomposed.skills if s.label == "Python (computer programming)")
    assert rank[python.id] <= next((i for i, s in enumerate(plain.skills) if s.id == python.id), 99)
    assert all(s.piece is None or s.piece in pieces(MULTI) for s in decomposed.skills)
    assert [s.score for s in decomposed.skills] == sorted((s.score for s in decomposed.skills), reverse=True)
    # Opt-in for the shipped model (its package defaults map one embedding per sentence, with token matching).
    assert not mapper.decompose and ranking(mapper.map([MULTI], top=10)[0]) == ranking(plain)
    on = SkillMapper(built_store, encoder, exact=True, decompose=True)
    assert ranking(on.map([MULTI], top=10)[0]) == ranking(decomposed)


def test_mapping_only_the_unfamiliar_sentences_pieces_ranks_as_mapping_every_piece(built_store, encoder):
    mapper = SkillMapper(built_store, encoder, exact=True)
    sentences = [MULTI, "Fluent English; German, such as spoken German, is an advantage.",
                 "Provide nursing care to patients, and lead a small team of nurses.",
                 "Cook meals and clean the kitchen, with attention to food safety."]
    wholes = mapper.map(sentences)
    nearest = sorted(r.nearest_memory for r in wholes)
    mapper.merge_params = MergeParams(gate=(nearest[1] + nearest[2]) / 2)  # two of them familiar, two not
    second_pass = pieces_to_map(wholes, mapper.merge_params)
    assert sum(map(len, second_pass)) < len(expand(sentences)[0]) - len(sentences) and any(second_pass)
    flat, parts = expand(sentences)
    every_piece = collapse(mapper.map_vectors(flat, encoder.encode(flat)), parts, 10, mapper.merge_params)
    assert [ranking(r) for r in mapper.map(sentences, decompose=True)] == [ranking(r) for r in every_piece]


@pytest.mark.parametrize("sentence", ["Programming in Python"])
def test_a_sentence_without_pieces_maps_as_before(built_store, encoder, sentence):
    mapper = SkillMapper(built_store, encoder, exact=True)
    assert mapper.map([sentence], decompose=True)[0] == mapper.map([sentence])[0]


TUNE_GRID = {"lam": (0.4,), "k": (16,), "tau": (0.05,), "aggregation": ("softmax",), "weight": (0.7, 0.9),
             "protect": (0, 1), "token_weight": (0.0,)}  # the merge settings are what this grid is about


def test_tuning_with_decomposition_scores_each_point_as_a_direct_run(built_stores, encoder):
    built_store = built_stores["embedded"]  # one backend, as test_tuning's replay test (local mode: 96 s of the suite)
    mapper = SkillMapper(built_store, encoder, exact=True)
    rows = tune(mapper, ["tech-validation"], grid=TUNE_GRID, decompose=True)
    assert sorted((r["weight"], r["protect"]) for r in rows) == [(0.7, 0), (0.7, 1), (0.9, 0), (0.9, 1)]
    assert {r["gate"] for r in rows} == {MergeParams().gate}
    for row in rows:
        direct = SkillMapper(built_store, encoder, ScoringParams(lam=0.4, k=16, tau=0.05), exact=True, decompose=True)
        direct.merge_params = MergeParams(row["weight"], row["protect"], row["gate"])
        report = run_eval(direct, "tech-validation")["knnbe"]
        for metric in ("rp@5", "rp@10", "mrr"):
            assert row["tech-validation"][metric] == pytest.approx(report[metric])
    assert len({round(r["tech-validation"]["mrr"], 6) for r in rows}) > 1  # the merge settings matter


def test_a_store_tuned_with_decomposition_maps_with_it_unless_told_not_to(built_store, encoder):
    manifest = built_store.manifest
    best = {"lam": 0.4, "k": 16, "tau": 0.05, "aggregation": "softmax", "weight": 0.9, "protect": 2, "gate": 1.01}
    try:
        save_params(SkillMapper(built_store, encoder), best, ["tech-validation"])
        assert built_store.manifest.params["decompose"] == {"weight": 0.9, "protect": 2, "gate": 1.01}
        mapper = SkillMapper(built_store, encoder, exact=True)
        assert mapper.decompose and mapper.merge_params == MergeParams(0.9, 2, 1.01)
        result = mapper.map([MULTI])[0]
        assert result == mapper.map([MULTI], decompose=True)[0] and any(s.piece for s in result.skills)
        off = SkillMapper(built_store, encoder, exact=True, decompose=False)
        assert not any(s.piece for s in off.map([MULTI])[0].skills)
        built_store.update_manifest(params={**built_store.manifest.params, "decompose": {"weight": 3, "protect": 1}})
        with pytest.raises(InvalidInputError, match=r"decomposition weight must be in \(0, 1\], got 3"):
            SkillMapper(built_store, encoder)
    finally:
        manifest.params = None
        built_store._write_manifest(manifest)
    shipped = SkillMapper(built_store, encoder)  # back to the package defaults: token matching, no decomposition
    assert not shipped.decompose and shipped.merge_params == MergeParams() and shipped.params.token_weight == 0.75
    try:
        save_params(SkillMapper(built_store, encoder), {"lam": 0.4, "k": 16, "tau": 0.05, "aggregation": "softmax"},
                    ["tech-validation"])
        assert not SkillMapper(built_store, encoder).decompose  # tuned without it: the store maps without it
    finally:
        manifest.params = None
        built_store._write_manifest(manifest)
