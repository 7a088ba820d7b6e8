"""The kNNBE contract on hand-computed examples (numbers worked out on paper, in the comments)."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from knnbe_qdrant import InvalidInputError, ScoringParams
from knnbe_qdrant._scoring import interpolate, knn_vote, neighbour_weights, score_candidates, union_candidates


def test_softmax_weights_two_neighbours():
    # (0.9 - 0.9) / 0.1 = 0 and (0.8 - 0.9) / 0.1 = -1  ->  [1, e^-1] / (1 + e^-1)
    w = neighbour_weights(np.array([0.9, 0.8]), tau=0.1)
    e = math.exp(-1)
    assert w == pytest.approx([1 / (1 + e), e / (1 + e)], abs=1e-12)
    assert w == pytest.approx([0.7310585786, 0.2689414214], abs=1e-9)


def test_knn_vote_sums_weights_per_label():
    # z = [0, -1, -2] -> e = [1, 0.36788, 0.13534], sum 1.50321
    # w = [0.66524, 0.24473, 0.09003]; skill 0 gets w0 + w2 = 0.755272, skill 1 gets 0.244728, skill 2 nothing.
    v = knn_vote(np.array([0.9, 0.8, 0.7]), np.array([0, 1, 0]), n_candidates=3, tau=0.1)
    assert v == pytest.approx([0.7552715, 0.2447285, 0.0], abs=1e-6)


def test_score_interpolates_and_vote_can_overturn_the_bi_encoder():
    # b = [0.6, 0.7]; v = [0.755272, 0.244728] (as above); lam = 0.5
    # score0 = 0.3 + 0.377636 = 0.677636; score1 = 0.35 + 0.122364 = 0.472364 -> skill 0 first despite lower b.
    params = ScoringParams(lam=0.5, k=3, tau=0.1)
    s = score_candidates(np.array([0.6, 0.7]), np.array([0.9, 0.8, 0.7]), np.array([0, 1, 0]), params)
    assert s.score == pytest.approx([0.6776358, 0.4723642], abs=1e-6)
    assert list(s.order) == [0, 1]
    assert s.knn == pytest.approx([0.7552715, 0.2447285], abs=1e-6)


def test_lambda_extremes():
    b, v = np.array([0.2, 0.9]), np.array([0.8, 0.1])
    assert interpolate(b, v, 1.0) == pytest.approx(b)
    assert interpolate(b, v, 0.0) == pytest.approx(v)
    assert interpolate(b, v, 0.25) == pytest.approx([0.25 * 0.2 + 0.75 * 0.8, 0.25 * 0.9 + 0.75 * 0.1])


def test_candidates_are_top_n_then_knn_only_skills_in_first_seen_order():
    candidates, labels = union_candidates(["a", "b"], ["c", "a", "c", "d"])
    assert candidates == ["a", "b", "c", "d"]
    assert list(labels) == [2, 0, 2, 3]


def test_knn_only_candidate_is_scored_with_the_b_it_is_given():
    # Candidate 2 ("c") came only from the kNN side, with its exact b = 0.4 (never 0).
    # One neighbour votes for it: v = 1; score = 0.5 * 0.4 + 0.5 * 1 = 0.7.
    params = ScoringParams(lam=0.5, k=1, tau=0.05)
    s = score_candidates(np.array([0.5, 0.45, 0.4]), np.array([0.8]), np.array([2]), params)
    assert s.score == pytest.approx([0.25, 0.225, 0.7])
    assert s.bi_encoder[2] == pytest.approx(0.4)
    assert list(s.order) == [2, 0, 1]


def test_ties_break_on_higher_bi_encoder_then_index():
    # scores: 0.5*0.4 + 0.5*0.6 = 0.5 and 0.5*0.6 + 0.5*0.4 = 0.5 -> tie, higher b (index 1) first.
    params = ScoringParams(lam=0.5, k=2, tau=1.0, aggregation="uniform")
    s = score_candidates(np.array([0.4, 0.6, 0.1]), np.array([0.3, 0.3]), np.array([0, 0]), params)
    assert s.knn == pytest.approx([1.0, 0.0, 0.0])
    params = ScoringParams(lam=0.5, k=2, tau=1.0, aggregation="uniform")
    s = score_candidates(np.array([0.4, 0.6]), np.array([0.3, 0.3]), np.array([0, 1]), params)
    # v = [0.5, 0.5]; scores = [0.45, 0.55]
    assert s.score == pytest.approx([0.45, 0.55])
    s = score_candidates(np.array([0.5, 0.5]), np.array([0.3, 0.3]), np.array([1, 0]), params)
    assert list(s.order) == [0, 1]  # identical score and b: lower index first


def test_uniform_aggregation_ignores_similarity():
    v = knn_vote(np.array([0.99, 0.1, 0.1, 0.1]), np.array([0, 1, 1, 1]), 2, tau=0.01, aggregation="uniform")
    assert v == pytest.approx([0.25, 0.75])


def test_no_neighbours_means_no_vote():
    v = knn_vote(np.array([]), np.array([], dtype=int), 3, tau=0.05)
    assert v == pytest.approx([0, 0, 0])


def test_tiny_tau_stays_finite_and_picks_the_nearest():
    w = neighbour_weights(np.array([0.91, 0.9, -0.5]), tau=1e-6)
    assert np.all(np.isfinite(w))
    assert w == pytest.approx([1.0, 0.0, 0.0])


@given(
    sims=st.lists(st.floats(-1, 1), min_size=1, max_size=80),
    tau=st.floats(1e-4, 10),
    n_labels=st.integers(1, 10),
)
def test_votes_are_a_distribution_over_labels(sims, tau, n_labels):
    sims = np.array(sims)
    labels = np.arange(len(sims)) % n_labels
    v = knn_vote(sims, labels, n_labels, tau)
    assert np.all(v >= 0)
    assert v.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"lam": 1.5}, "lam"), ({"lam": -0.1}, "lam"), ({"k": 0}, "k"), ({"tau": 0}, "tau"),
     ({"n_candidates": 0}, "n_candidates"), ({"aggregation": "max"}, "aggregation"),
     ({"clause_depth": -1}, "clause_depth"), ({"clause_depth": 2.5}, "clause_depth"),
     ({"clause_depth": True}, "clause_depth")],
)
def test_bad_parameters_are_named(kwargs, field):
    with pytest.raises(InvalidInputError, match=field):
        ScoringParams(**kwargs)


@st.composite
def batches(draw):
    """Rows of (top skills, neighbour skills, their similarities) over a few skill codes, ragged like a batch."""
    rows = draw(st.integers(1, 6))
    n_codes = draw(st.integers(1, 12))
    out = []
    for _ in range(rows):
        top = draw(st.lists(st.integers(0, n_codes - 1), max_size=6, unique=True))
        votes = draw(st.lists(st.integers(0, n_codes - 1), max_size=10))
        sims = draw(st.lists(st.floats(-1, 1), min_size=len(votes), max_size=len(votes)))
        out.append((top, votes, sims))
    return out


def padded(lists, fill):
    width = max((len(x) for x in lists), default=0)
    return np.array([list(x) + [fill] * (width - len(x)) for x in lists], dtype=float if fill != -1 else np.int64
                    ).reshape(len(lists), width)


@given(batch=batches(), tau=st.floats(1e-3, 1.0), lam=st.floats(0, 1),
       aggregation=st.sampled_from(["softmax", "uniform"]))
def test_the_batch_scores_each_row_as_the_per_sentence_formula(batch, tau, lam, aggregation):
    """union_batch and score_batch (what the mapper runs) against a plain per-sentence reference written here."""
    from knnbe_qdrant._scoring import score_batch, union_batch

    tops, votes, sims = zip(*batch)
    candidates, columns = union_batch(padded(tops, -1), padded(votes, -1))
    rng = np.random.default_rng(len(batch))
    b = rng.uniform(-1, 1, candidates.shape)
    ranked = candidates >= 0
    params = ScoringParams(lam=lam, tau=tau, aggregation=aggregation)
    scored = score_batch(b, ranked, padded(sims, 0.0), columns, params)
    for row, (top, vote, sim) in enumerate(batch):
        order: list[int] = []
        for code in [*top, *vote]:  # the reference union: first appearance
            if code not in order:
                order.append(code)
        assert candidates[row, : len(order)].tolist() == order and (candidates[row, len(order):] == -1).all()
        assert [order[c] for c in columns[row, : len(vote)]] == vote and (columns[row, len(vote):] == -1).all()
        weights = (np.exp((np.array(sim) - max(sim, default=0)) / tau) if aggregation == "softmax"
                   else np.ones(len(sim)))
        weights = weights / weights.sum() if len(sim) else weights
        want = np.zeros(len(order))
        for w, code in zip(weights, vote):
            want[order.index(code)] += w
        assert scored.knn[row, : len(order)] == pytest.approx(want, abs=1e-9)
        assert (scored.knn[row, len(order):] == 0).all()
        s = lam * b[row, : len(order)] + (1 - lam) * want
        assert scored.score[row, : len(order)] == pytest.approx(s, abs=1e-9)
        best_first = sorted(range(len(order)), key=lambda i: (-scored.score[row, i], -b[row, i], i))
        assert scored.order[row, : len(order)].tolist() == best_first


def test_a_candidate_belongs_to_the_clause_holding_most_of_its_attention():
    from knnbe_qdrant._scoring import clause_of_candidates

    # Tokens: clause 0, clause 0, none (a separator), clause 1, padding. Candidates: all on clause 0; split 0.3 /
    # 0.3 / 0.4 across both and the separator (no majority); 0.6 on clause 1; exactly half on clause 1.
    attention = np.array([[[0.5, 0.3, 0.0, 0.2], [0.5, 0.0, 0.1, 0.2], [0.0, 0.4, 0.3, 0.1],
                           [0.0, 0.3, 0.6, 0.5], [0.0, 0.0, 0.0, 0.0]]])
    token_clause = np.array([[0, 0, -1, 1, -1]])
    assert clause_of_candidates(attention, token_clause).tolist() == [[0, -1, 1, 1]]
    # No clauses at all (no sentence split): every candidate in none.
    assert clause_of_candidates(attention, np.full((1, 5), -1)).tolist() == [[-1, -1, -1, -1]]


def _ranked(scores):
    from knnbe_qdrant._scoring import Scored

    s = np.array(scores, dtype=float)
    order = np.argsort(-s, axis=1, kind="stable")
    return Scored(bi_encoder=s * 2, knn=s * 3, score=s, order=order)


def test_each_clauses_best_moves_up_behind_the_first_and_scores_still_fall():
    from knnbe_qdrant._scoring import cover_clauses

    #                 0     1     2     3     4     5     6
    scored = _ranked([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]])
    clause = np.array([[0, 0, 0, -1, 1, 2, 1]])  # clause 1's best ranks 5th, clause 2's 6th
    out = cover_clauses(scored, clause, depth=10)
    assert out.order[0].tolist() == [0, 4, 5, 1, 2, 3, 6]
    # Along the new order, a moved one takes the score of the best one it passed.
    assert out.score[0, out.order[0]].tolist() == [0.9, 0.8, 0.8, 0.8, 0.7, 0.6, 0.3]
    assert (out.bi_encoder == scored.bi_encoder).all() and (out.knn == scored.knn).all()
    # Only the first `depth` take part: clause 2's best at 6th is out of a depth of 5, and nothing leaves the 5.
    shallow = cover_clauses(scored, clause, depth=5)
    assert shallow.order[0].tolist() == [0, 4, 1, 2, 3, 5, 6]
    # The first result stays first even when it is in no clause; nothing to move, nothing moves.
    assert cover_clauses(scored, np.array([[-1, 0, 0, 1, -1, -1, -1]]), depth=10).order[0].tolist() == [
        0, 1, 3, 2, 4, 5, 6]
    unchanged = cover_clauses(scored, np.full((1, 7), -1), depth=10)
    assert (unchanged.order == scored.order).all() and (unchanged.score == scored.score).all()


@given(st.lists(st.lists(st.tuples(st.floats(0, 1), st.integers(-1, 3)), min_size=1, max_size=14), min_size=1,
                max_size=5), st.integers(1, 12))
def test_coverage_reorders_only_the_head_and_keeps_every_clause_first_in_it(rows, depth):
    from knnbe_qdrant._scoring import cover_clauses

    width = max(len(r) for r in rows)
    scores = np.array([[s for s, _ in r] + [-1.0] * (width - len(r)) for r in rows])
    clause = np.array([[c for _, c in r] + [-1] * (width - len(r)) for r in rows])
    scored = _ranked(scores)
    out = cover_clauses(scored, clause, depth)
    d = min(depth, width)
    for row in range(len(rows)):
        before, after = scored.order[row].tolist(), out.order[row].tolist()
        assert sorted(after[:d]) == sorted(before[:d]) and after[d:] == before[d:] and after[0] == before[0]
        firsts = list(dict.fromkeys(c for c in (clause[row, i] for i in before[:d]) if c >= 0))
        best = [next(i for i in before[:d] if clause[row, i] == c) for c in firsts]
        assert set(best) - {before[0]} <= set(after[1 : 1 + len(best)])  # right behind the first
        ordered = out.score[row, after]
        assert (np.diff(ordered[:d]) <= 1e-12).all()  # scores fall down the new order
        assert (out.score[row, after[d:]] == scored.score[row, after[d:]]).all()
