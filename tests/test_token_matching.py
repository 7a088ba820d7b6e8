"""Token-level matching: the pure score, its torch twin used in training, the encoder's token states, and the
mapper scoring candidates with them (exactly the formula, live under curation), on the real MiniLM and real ESCO."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from knnbe_qdrant import Curator, InvalidInputError, ScoringParams, SkillMapper
from knnbe_qdrant._results import attended_words
from knnbe_qdrant._scoring import blend_bi_encoder, token_attention
from knnbe_qdrant.encoding import Encoder

SENTENCE = "You will design and maintain REST APIs in Python and write efficient SQL queries against PostgreSQL."
TOKENS = ScoringParams(lam=0.4, k=32, tau=0.05, token_weight=0.5, token_temperature=1.0)


def test_token_attention_is_a_softmax_weighted_cosine():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(7, 16)).astype(np.float32)
    skills = rng.normal(size=(3, 16)).astype(np.float32)
    skills /= np.linalg.norm(skills, axis=1, keepdims=True)
    score, weights = token_attention(states, skills, 1.0)
    assert score.shape == (3,) and weights.shape == (7, 3)
    assert np.allclose(weights.sum(axis=0), 1.0)
    cos = (states / np.linalg.norm(states, axis=1, keepdims=True)) @ skills.T
    for c in range(3):  # written out: sum_t softmax_t(<x_t, s> / T) * cos(x_t, s)
        z = np.exp(states @ skills[c] - (states @ skills[c]).max())
        assert score[c] == pytest.approx(float((z / z.sum()) @ cos[:, c]), rel=1e-5)
    # T -> infinity: the mean cosine; T -> 0: the cosine of the token with the largest dot product
    assert token_attention(states, skills, 1e6)[0] == pytest.approx(cos.mean(axis=0), rel=1e-4)
    best = np.argmax(states @ skills.T, axis=0)
    assert token_attention(states, skills, 1e-4)[0] == pytest.approx(cos[best, range(3)], rel=1e-4)
    assert blend_bi_encoder(np.array([0.2]), np.array([0.6]), 0.25)[0] == pytest.approx(0.3)


def test_padded_tokens_take_no_attention_in_a_batch():
    """The mapper scores a batch of sentences of different lengths padded to one: padding must weigh nothing,
    whatever it holds, and each row must equal its sentence scored alone against its own candidates."""
    from knnbe_qdrant._scoring import token_attention_batch

    rng = np.random.default_rng(1)
    lengths = [7, 2, 5]
    padded = rng.normal(size=(3, 7, 16)).astype(np.float32) * 50  # loud padding: it would win any softmax
    present = np.arange(7) < np.array(lengths)[:, None]
    skills = rng.normal(size=(3, 4, 16)).astype(np.float32)
    skills /= np.linalg.norm(skills, axis=2, keepdims=True)
    t, weights = token_attention_batch(padded, present, skills, 0.5)
    assert np.allclose(weights[~present], 0.0) and np.allclose(weights.sum(axis=1), 1.0)
    for row, n in enumerate(lengths):
        alone, alone_weights = token_attention(padded[row, :n], skills[row], 0.5)
        assert t[row] == pytest.approx(alone, rel=1e-5)
        assert np.allclose(weights[row, :n], alone_weights, atol=1e-6)


def test_training_loss_scores_with_the_same_formula():
    torch = pytest.importorskip("torch")
    from knnbe_qdrant.encoding.token_loss import content_mask
    from knnbe_qdrant.encoding.token_loss import token_attention as torch_attention

    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(2, 5, 8)).astype(np.float32)
    skills = rng.normal(size=(4, 8)).astype(np.float32)
    skills /= np.linalg.norm(skills, axis=1, keepdims=True)
    ids = torch.tensor([[101, 7, 8, 102, 0], [101, 102, 0, 0, 0]])  # [CLS] a b [SEP] pad; [CLS] [SEP] pad...
    mask = content_mask(ids, (ids != 0).long(), torch.tensor([0, 101, 102]))
    assert mask.tolist() == [[False, True, True, False, False], [True, True, False, False, False]]
    got = torch_attention(torch.from_numpy(tokens), mask, torch.from_numpy(skills), 0.7).numpy()
    assert np.allclose(got[0], token_attention(tokens[0, 1:3], skills, 0.7)[0], atol=1e-5)
    assert np.allclose(got[1], token_attention(tokens[1, :2], skills, 0.7)[0], atol=1e-5)


def test_params_refuse_a_bad_token_weight_or_temperature():
    with pytest.raises(InvalidInputError, match="token_weight"):
        ScoringParams(token_weight=1.5)
    with pytest.raises(InvalidInputError, match="token_temperature"):
        ScoringParams(token_temperature=0)


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_encoder_gives_token_states_from_the_same_pass(encoder, runtime):
    # Each runtime named, not the default: on a CPU with bf16 units the default runs OpenVINO in bf16, whose vectors
    # are another runtime's to within 1e-3, not 1e-5.
    other = Encoder(encoder.name, runtime=runtime)
    texts = [SENTENCE, "cook", "Kochen & Backen (m/w/d)"]
    encoded = other.encode_tokens(texts)
    assert np.allclose(encoded.vectors, other.encode(texts), atol=1e-5)
    for text, states, spans in zip(texts, encoded.states, encoded.spans):
        assert states.shape == (len(spans), encoder.dimension) and len(spans) > 0  # [CLS]/[SEP] left out
        assert [text[a:b] for a, b in spans][:1] == [text[spans[0][0]:spans[0][1]]]
    assert [SENTENCE[a:b] for a, b in encoded.spans[0]][:5] == ["You", "will", "design", "and", "maintain"]
    picked = encoded[[2, 0]]
    assert len(picked) == 2 and picked.spans[1] == encoded.spans[0]
    if runtime == "torch":
        reference = Encoder(encoder.name, runtime="onnx").encode_tokens(texts)  # fp32 both
        assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(encoded.states, reference.states))


def test_attended_words_are_whole_words_in_order():
    text = "Experience with PostgreSQL."
    spans = [(0, 10), (11, 15), (16, 20), (20, 26), (26, 27)]  # Experience with Post ##greSQL .
    columns = np.array([[0.05, 0.05, 0.3, 0.3, 0.3], [0.2, 0.15, 0.0, 0.18, 0.47], [0.4, 0.0, 0.0, 0.05, 0.55]]).T
    assert attended_words(text, spans, columns) == [["PostgreSQL"], ["Experience", "PostgreSQL"], ["Experience"]]
    # Punctuation alone shows no word, for any skill.
    assert attended_words(".", [(0, 1)], np.ones((1, 2))) == [[], []]


@pytest.fixture(scope="module", params=[0, 10], ids=["plain", "clause-coverage"])
def token_mapper(request, built_store, encoder):
    return SkillMapper(built_store, encoder, replace(TOKENS, clause_depth=request.param), exact=True,
                       decompose=False)


def test_mapper_scores_candidates_by_the_blended_formula(token_mapper, encoder):
    [result] = token_mapper.map([SENTENCE], top=5)
    encoded = encoder.encode_tokens([SENTENCE])
    records = token_mapper.store.retrieve("skills", [], with_vectors=True)  # nothing asked, nothing back
    assert records == []
    for match in result.skills:
        assert match.tokens and all(w in SENTENCE for w in match.tokens)
        label_vector = encoder.encode([match.label])  # a skill's vector is its label's embedding
        pooled = float(encoded.vectors[0] @ label_vector[0])
        tokens, _ = token_attention(encoded.states[0], label_vector, TOKENS.token_temperature)
        want = blend_bi_encoder(np.array([pooled]), tokens, TOKENS.token_weight)[0]
        assert match.bi_encoder == pytest.approx(want, abs=2e-4)
        formula = TOKENS.lam * match.bi_encoder + (1 - TOKENS.lam) * match.knn
        if token_mapper.params.clause_depth:  # a clause's best moved up takes the score of the best one it passed
            assert match.score >= formula - 1e-9
        else:
            assert match.score == pytest.approx(formula, abs=1e-9)
    # The same call through plain vectors (a caller that encoded without token states) gives the same results.
    [again] = token_mapper.map_vectors([SENTENCE], encoder.encode([SENTENCE]), top=5)
    assert [(s.id, round(s.score, 6)) for s in again.skills] == [(s.id, round(s.score, 6)) for s in result.skills]


def test_a_batch_scores_each_sentence_as_if_it_were_alone(token_mapper):
    """The mapper scores token states in groups of sentences of similar length (_mapper.TOKEN_CHUNK): a batch of
    lengths from 2 to 60 words, out of order and more than a group, must give each sentence what it gets alone:
    the same skills, scores, and attended words (a row given another's states or attention would not)."""
    from knnbe_qdrant._mapper import TOKEN_CHUNK

    clauses = ["Python", "SQL queries against PostgreSQL", "maintain REST APIs", "German is an advantage",
               "design and maintain cloud infrastructure on AWS with Terraform and Kubernetes",
               "care for the elderly in their homes", "prepare meals", "drive a forklift safely in the warehouse"]
    sentences = [" and ".join(clauses[(i * 3) % len(clauses):][: 1 + i % 5] * (1 + (i * 7) % 4)) + "."
                 for i in range(2 * TOKEN_CHUNK + 3)]
    assert len({len(s.split()) for s in sentences}) > 8
    # One encoder pass for both, so that only the scoring differs (a pass's padding moves states by ~1e-4).
    encoded = token_mapper.encode(sentences)
    together = token_mapper.map_vectors(sentences, encoded, top=5)
    for i, (sentence, got) in enumerate(zip(sentences, together)):
        [alone] = token_mapper.map_vectors([sentence], encoded[i : i + 1], top=5)
        assert [s.id for s in got.skills] == [s.id for s in alone.skills], sentence
        assert [s.score for s in got.skills] == pytest.approx([s.score for s in alone.skills], abs=1e-6)
        assert [s.tokens for s in got.skills] == [s.tokens for s in alone.skills]


@pytest.mark.parametrize("pool", [3, 32])  # 3: a small pool, so that this small store shows the effect
def test_asking_for_more_results_never_reorders_the_first_ones(token_mapper, monkeypatch, pool):
    """With tokens the cosine top-N is a candidate generator, not a guarantee; if N grew with `top`, candidates the
    token score lifts would enter only for larger `top`, and `eval` (100 deep) would measure another ranking than
    `map --top 10`. The pool the token score reorders is fixed; hits past it rank after it."""
    from knnbe_qdrant import _mapper

    monkeypatch.setattr(_mapper, "MIN_TOKEN_CANDIDATES", pool)
    sentences = [SENTENCE, "Fluency in English is required; German is an advantage.",
                 "You will design and maintain REST APIs in Python and write efficient SQL queries."]
    def ranking(top):
        return [[(s.id, s.score) for s in r.skills] for r in token_mapper.map(sentences, top=top)]

    first = ranking(10)
    for top in (3, 5, 33, 100):
        for got, want in zip(ranking(top), first):
            n = min(top, 10)
            assert [i for i, _ in got[:n]] == [i for i, _ in want[:n]]
            # A skill only a neighbour names at top 10 is a hit at 100: the engine's cosine, not numpy's.
            assert [s for _, s in got[:n]] == pytest.approx([s for _, s in want[:n]], abs=1e-6)
    assert all(len(r) == 100 for r in ranking(100))


def test_without_token_weight_nothing_changes(built_store, encoder):
    plain = SkillMapper(built_store, encoder, ScoringParams(lam=0.4, k=32, tau=0.05), exact=True, decompose=False)
    [result] = plain.map([SENTENCE], top=5)
    assert all(s.tokens is None for s in result.skills)
    vector = encoder.encode([SENTENCE])[0]
    for match in result.skills:
        assert match.bi_encoder == pytest.approx(float(vector @ encoder.encode([match.label])[0]), abs=2e-4)


def _baker(tmp_path, encoder, small_skills):
    """A small store whose tenant acme has skill t-1 "bake bread", a token mapper over it, a curator, and the
    b that skill t-1 must have, for the sentence below, under a given label."""
    from tests.helpers import build_small

    store = build_small("embedded", tmp_path, encoder, small_skills[:40], [])
    # A pool of 64 holds all 41 skills: t-1 is token-scored under any label ("repair engines" ranks low by cosine).
    pooled_all = ScoringParams(**{**TOKENS.__dict__, "n_candidates": 64})
    mapper = SkillMapper(store, encoder, pooled_all, exact=True, decompose=False)
    curator = Curator(store, encoder)
    curator.add_skill("t-1", "bake bread", tenant="acme")
    encoded = encoder.encode_tokens([BAKING])

    def b_for(label: str) -> float:
        v = encoder.encode([label])
        t, _ = token_attention(encoded.states[0], v, TOKENS.token_temperature)
        return float(blend_bi_encoder(encoded.vectors[0] @ v.T, t, TOKENS.token_weight)[0])

    def b_of_t1() -> float:
        [r] = mapper.map([BAKING], top=40, tenant="acme")
        return next(s.bi_encoder for s in r.skills if s.id == "t-1")

    return store, curator, b_for, b_of_t1


BAKING = "You will bake bread and pastries every morning."


def test_a_renamed_skill_is_scored_with_its_new_vector_at_once(tmp_path, encoder, small_skills):
    store, curator, b_for, b_of_t1 = _baker(tmp_path, encoder, small_skills)
    try:
        assert b_of_t1() == pytest.approx(b_for("bake bread"), abs=2e-4)  # cached from here on
        for label in ("repair engines", "bake bread", "repair engines"):  # back and forth: no stale vector
            curator.update_skill("t-1", label=label, tenant="acme")
            assert b_of_t1() == pytest.approx(b_for(label), abs=2e-4)
    finally:
        store.close()


def test_a_vector_read_inside_a_rename_is_never_served_after_it(tmp_path, encoder, small_skills):
    """A rename writes the vector, then the label: a mapper reading in between sees the new vector under the old
    label. Renaming back must not be scored with that vector."""
    from knnbe_qdrant import _schema as S

    store, curator, b_for, b_of_t1 = _baker(tmp_path, encoder, small_skills)
    try:
        point = S.skill_point_id("acme", "t-1")
        store.update_vectors(S.SKILLS, [point], encoder.encode(["repair engines"]))  # the rename's first write
        b_of_t1()  # reads (and caches) the new vector under the old label
        store.set_payload(S.SKILLS, [point], {S.F_LABEL: "repair engines", S.F_UPDATED_AT: S.utc_now(precise=True)})
        curator.update_skill("t-1", label="bake bread", tenant="acme")
        assert b_of_t1() == pytest.approx(b_for("bake bread"), abs=2e-4)
    finally:
        store.close()


@pytest.mark.parametrize("text", ["[CLS] [SEP]", "[PAD]", "!!!", "Python " * 400, "naïve café 東京 🚀",
                                  # clauses: more than MAX_PIECES, separators only, past the encoder's 256 tokens
                                  "write code, " * 300, "; , ; and or ; with", "cook fish; " + "clean rooms and " * 150,
                                  "réparer des moteurs; 東京 で 料理 する; 🚀 and 🛠 with ∑"])
def test_odd_texts_still_have_token_states_and_map(token_mapper, encoder, text):
    encoded = encoder.encode_tokens([text])
    assert encoded.states[0].shape[0] >= 1 and np.isfinite(encoded.states[0]).all()
    assert all(0 <= a <= b <= len(text) for a, b in encoded.spans[0])
    [result] = token_mapper.map([text], top=3)
    assert len(result.skills) == 3 and all(np.isfinite(s.score) for s in result.skills)



TWO_CLAUSES = ["Fluency in English is required; German is an advantage.", SENTENCE,
               "You will cook meat dishes and fish, and clean the rooms of our guests."]


def test_each_clause_brings_its_best_skill_to_the_head(built_store, encoder):
    """Clause coverage on the real mapper: for a sentence of two clauses that name something, the best skill of
    each clause (the one whose attention lies mostly on it) within the first ten comes right after the first; the
    first ten are the same skills as without it; scores still fall down the ranking; the words a match attended
    to are where its clause is."""
    from knnbe_qdrant._decompose import pieces

    plain = SkillMapper(built_store, encoder, TOKENS, exact=True, decompose=False)
    covered = SkillMapper(built_store, encoder, replace(TOKENS, clause_depth=10), exact=True, decompose=False)
    moved = 0
    for before, after in zip(plain.map(TWO_CLAUSES, top=10), covered.map(TWO_CLAUSES, top=10)):
        assert {s.id for s in after.skills} == {s.id for s in before.skills}
        assert after.skills[0].id == before.skills[0].id
        assert all(a.score >= b.score - 1e-12 for a, b in zip(after.skills, after.skills[1:]))
        clauses = pieces(before.text)
        assert len(clauses) >= 2

        firsts = {}
        for match in before.skills:
            inside = [i for i, c in enumerate(clauses) if match.tokens and all(w in c for w in match.tokens)]
            c = inside[0] if len(inside) == 1 else None
            if c is not None:
                firsts.setdefault(c, match.id)
        head = [s.id for s in after.skills[: 1 + len(clauses)]]
        assert set(firsts.values()) <= set(head), (before.text, firsts, head)
        moved += [s.id for s in after.skills] != [s.id for s in before.skills]
        for a in after.skills:  # b and the vote are the skill's own; only the score may be lifted
            b = next(x for x in before.skills if x.id == a.id)
            assert (a.bi_encoder, a.knn) == (b.bi_encoder, b.knn) and a.score >= b.score
    assert moved  # the sentences were chosen for it: some clause's best ranked below the head without it


def test_a_sentence_of_one_clause_is_not_reordered(built_store, encoder):
    plain = SkillMapper(built_store, encoder, TOKENS, exact=True, decompose=False)
    covered = SkillMapper(built_store, encoder, replace(TOKENS, clause_depth=10), exact=True, decompose=False)
    one = ["Programming in Python", "You will design and test", "Experience with PostgreSQL."]
    for before, after in zip(plain.map(one, top=10), covered.map(one, top=10)):
        assert [(s.id, s.score) for s in after.skills] == [(s.id, s.score) for s in before.skills]
