"""Ranking metrics of the skill-mapping benchmarks. Pure: per sentence, then averaged over sentences.

RP@K (R-precision at K) = |gold ∩ top-K| / min(K, |gold|);  MRR = mean of 1 / rank of the first gold skill
(0 when no gold skill is in the ranking).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from .._errors import InvalidInputError


def rp_at_k(ranking: Sequence[str], gold: Collection[str], k: int) -> float:
    if not gold:
        raise InvalidInputError("a sentence without gold skills has no R-precision")
    return len(set(ranking[:k]) & set(gold)) / min(k, len(set(gold)))


def reciprocal_rank(ranking: Sequence[str], gold: Collection[str]) -> float:
    gold = set(gold)
    for rank, skill in enumerate(ranking, start=1):
        if skill in gold:
            return 1.0 / rank
    return 0.0


def evaluate(rankings: Sequence[Sequence[str]], golds: Sequence[Collection[str]]) -> dict[str, float]:
    """{"n", "rp@5", "rp@10", "mrr"} averaged over sentences (fractions in [0, 1])."""
    if len(rankings) != len(golds):
        raise InvalidInputError(f"{len(rankings)} rankings for {len(golds)} gold sets")
    n = len(golds)
    if n == 0:
        raise InvalidInputError("nothing to evaluate")
    return {
        "n": n,
        "rp@5": sum(rp_at_k(r, g, 5) for r, g in zip(rankings, golds)) / n,
        "rp@10": sum(rp_at_k(r, g, 10) for r, g in zip(rankings, golds)) / n,
        "mrr": sum(reciprocal_rank(r, g) for r, g in zip(rankings, golds)) / n,
    }
