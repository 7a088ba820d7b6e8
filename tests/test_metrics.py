"""Benchmark metrics on hand-made rankings."""

import pytest

from knnbe_qdrant.evaluation.metrics import evaluate, reciprocal_rank, rp_at_k


def test_rp_divides_by_the_smaller_of_k_and_the_gold_size():
    ranking = ["a", "x", "b", "y", "z", "c", "w", "v", "u", "t"]
    # 2 gold in the top 5 of 3 gold: 2 / min(5, 3)
    assert rp_at_k(ranking, {"a", "b", "c"}, 5) == pytest.approx(2 / 3)
    # all 3 within the top 10: 3 / 3
    assert rp_at_k(ranking, {"a", "b", "c"}, 10) == 1.0
    # 7 gold, 2 found in the top 5: 2 / 5
    assert rp_at_k(ranking, set("abqrsop"), 5) == pytest.approx(2 / 5)


def test_gold_that_cannot_be_found_still_counts():
    assert rp_at_k(["a", "b"], {"a", "unknown:missing"}, 5) == pytest.approx(1 / 2)


def test_reciprocal_rank_of_first_gold():
    assert reciprocal_rank(["x", "y", "a", "b"], {"a", "b"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x", "y"], {"a"}) == 0.0


def test_evaluate_averages_over_sentences():
    # sentence 1: RP@5 = 1/1, RP@10 = 1, RR = 1/2; sentence 2: RP@5 = 0, RP@10 = 1/2, RR = 1/6
    rankings = [["x", "a"], ["p", "q", "r", "s", "t", "b", "u"]]
    golds = [{"a"}, {"b", "c"}]
    report = evaluate(rankings, golds)
    assert report["n"] == 2
    assert report["rp@5"] == pytest.approx((1 + 0) / 2)
    assert report["rp@10"] == pytest.approx((1 + 0.5) / 2)
    assert report["mrr"] == pytest.approx((1 / 2 + 1 / 6) / 2)


def test_empty_gold_is_an_error():
    with pytest.raises(ValueError):
        rp_at_k(["a"], set(), 5)
    with pytest.raises(ValueError):
        evaluate([], [])
