"""Ranking metrics of the skill-mapping benchmarks. Pure: per sentence, then averaged over sentences.

RP@K (R-precision at K) = |gold ∩ top-K| / min(K, |gold|);  MRR = mean of 1 / rank of the first gold skill
(0 when no gold skill is in the ranking).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

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


def per_sentence(rankings: Sequence[Sequence[str]], golds: Sequence[Collection[str]]) -> dict[str, np.ndarray]:
    """Each metric per sentence, for intervals and paired comparisons."""
    if len(rankings) != len(golds):
        raise InvalidInputError(f"{len(rankings)} rankings for {len(golds)} gold sets")
    return {
        "rp@5": np.array([rp_at_k(r, g, 5) for r, g in zip(rankings, golds)]),
        "rp@10": np.array([rp_at_k(r, g, 10) for r, g in zip(rankings, golds)]),
        "mrr": np.array([reciprocal_rank(r, g) for r, g in zip(rankings, golds)]),
    }


def bootstrap_ci(values: np.ndarray, *, samples: int = 2000, seed: int = 0, level: float = 0.95
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over sentences (resampling sentences with replacement). Given the
    per-sentence differences of two systems on the same sentences, it is the paired bootstrap interval of the gain."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise InvalidInputError("nothing to resample")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


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
