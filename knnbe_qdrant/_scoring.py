"""The kNNBE scoring contract, and the only place it lives. Pure: numpy in, numpy out, no I/O.

For a sentence x and a candidate skill s:

    b(x, s) = cosine(x, s)                                    bi-encoder score
    v(x, s) = sum over the k nearest memory sentences j labelled s of
              softmax(sim(x, j) / tau) taken over those k neighbours
    score(x, s) = lam * b(x, s) + (1 - lam) * v(x, s)

Candidates are the top-N skills by b united with every skill that labels one of the k neighbours; a candidate
found only through the kNN side must be given its exact b by the caller, never 0.

Token-level matching (ConTeXT-match, Decorte et al., IEEE Access 2025) gives b a second part. With the sentence's
content-token states x_t (the encoder's last hidden states, special tokens left out) and the skill's unit vector s:

    t(x, s) = sum over tokens t of softmax_t(<x_t, s> / T) * cos(x_t, s)
    b(x, s) = (1 - alpha) * cosine(x, s) + alpha * t(x, s)

so a skill named in one clause is matched by that clause's tokens. With alpha > 0 the top-N by cosine are
candidates (a generator), no longer a guarantee of the exact top results; the mapper takes N >= MIN_TOKEN_CANDIDATES.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ._errors import InvalidInputError

AGGREGATIONS = ("softmax", "uniform")
MIN_TOKEN_CANDIDATES = 32
"""With token-level matching, at least this many skills come from the cosine side: the token score reorders them.
Set by judgement (the 10 of `top` seemed too few to reorder), not searched: no other value was measured."""
K = TypeVar("K", bound=Hashable)  # a skill key: its id in the product, anything hashable in tests


@dataclass(frozen=True)
class ScoringParams:
    """Parameters of kNNBE. Defaults are the plain kNNBE configuration from the literature (see README)."""

    lam: float = 0.5
    """Weight of the bi-encoder score; 1 - lam weighs the kNN vote."""
    k: int = 64
    """Number of memory neighbours that vote."""
    tau: float = 0.05
    """Softmax temperature of the vote; smaller concentrates the vote on the closest neighbours."""
    n_candidates: int | None = None
    """N: how many skills the bi-encoder side contributes as candidates; None means N = the number of results asked
    for, which already gives the exact top results: a skill outside the top-N by b that no neighbour votes for
    scores lam * b, no more than any of the N skills above it, so it can never outrank them."""
    aggregation: str = "softmax"
    """How neighbours are weighed: "softmax" (the contract above) or "uniform" (each neighbour 1/k)."""
    token_weight: float = 0.0
    """alpha: the share of the token-attention score in b; 0 is the pooled cosine alone (one forward pass either
    way: the token states are what pooling reads)."""
    token_temperature: float = 1.0
    """T of the token attention (for a model trained with it, its recipe's `token_temperature`)."""
    token_gate: float = 2.0
    """A sentence whose nearest memory sentence is at this similarity or more keeps the pooled cosine as b: the
    memory knows it, and its vote covers every skill it names (as decomposition's gate; above 1: never)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise InvalidInputError(f"lam must be in [0, 1], got {self.lam}")
        if self.k < 1:
            raise InvalidInputError(f"k must be >= 1, got {self.k}")
        if not self.tau > 0.0:
            raise InvalidInputError(f"tau must be > 0, got {self.tau}")
        if self.n_candidates is not None and self.n_candidates < 1:
            raise InvalidInputError(f"n_candidates must be >= 1, got {self.n_candidates}")
        if not 0.0 <= self.token_weight <= 1.0:
            raise InvalidInputError(f"token_weight must be in [0, 1], got {self.token_weight}")
        if not self.token_gate > 0.0:
            raise InvalidInputError(f"token_gate must be > 0, got {self.token_gate}")
        if not self.token_temperature > 0.0:
            raise InvalidInputError(f"token_temperature must be > 0, got {self.token_temperature}")
        if self.aggregation not in AGGREGATIONS:
            raise InvalidInputError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")


def neighbour_weights(similarities: np.ndarray, tau: float, aggregation: str = "softmax") -> np.ndarray:
    """Weight of each neighbour's vote; the weights of one sentence's neighbours sum to 1 (empty in, empty out)."""
    sims = np.asarray(similarities, dtype=np.float64)
    if sims.size == 0:
        return sims
    if aggregation == "uniform":
        return np.full_like(sims, 1.0 / sims.size)
    z = (sims - sims.max()) / tau  # shifting by the max keeps exp() finite for any tau
    e = np.exp(z)
    return e / e.sum()


def knn_vote(
    similarities: np.ndarray,
    labels: np.ndarray,
    n_candidates: int,
    tau: float,
    aggregation: str = "softmax",
) -> np.ndarray:
    """v(x, s) for each candidate index s in [0, n_candidates): the summed weights of the neighbours labelled s.

    `labels[j]` is the candidate index that neighbour j votes for.
    """
    weights = neighbour_weights(similarities, tau, aggregation)
    return np.bincount(np.asarray(labels, dtype=np.int64), weights=weights, minlength=n_candidates)[:n_candidates]


def token_attention(states: np.ndarray, skills: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """t(x, s) for each skill (row of `skills`, unit vectors) against one sentence's token `states` (tokens, d), and
    the attention each skill gives each token (tokens, skills), whose columns sum to 1. The training loss
    (encoding.token_loss) is the same formula in torch."""
    x = np.asarray(states, dtype=np.float32)
    dots = x @ np.asarray(skills, dtype=np.float32).T
    cos = dots / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    z = (dots - dots.max(axis=0, keepdims=True)) / temperature
    w = np.exp(z)
    w /= w.sum(axis=0, keepdims=True)
    return (w * cos).sum(axis=0).astype(np.float64), w


def blend_bi_encoder(pooled: np.ndarray, tokens: np.ndarray, token_weight: float) -> np.ndarray:
    """b = (1 - alpha) * pooled cosine + alpha * token-attention score."""
    return (1.0 - token_weight) * np.asarray(pooled, dtype=np.float64) + token_weight * np.asarray(tokens,
                                                                                                   dtype=np.float64)


def interpolate(bi_encoder: np.ndarray, knn: np.ndarray, lam: float) -> np.ndarray:
    """score = lam * b + (1 - lam) * v."""
    return lam * np.asarray(bi_encoder, dtype=np.float64) + (1.0 - lam) * np.asarray(knn, dtype=np.float64)


def union_candidates(top_skills: Sequence[K], neighbour_skills: Sequence[K]) -> tuple[list[K], np.ndarray]:
    """Candidates = top-N skills by b, then every new skill labelling a neighbour, in first-seen order.

    Returns the candidate list and, for each neighbour, the index of the candidate it votes for.
    """
    index: dict[K, int] = {}
    for s in top_skills:
        index.setdefault(s, len(index))
    labels = np.empty(len(neighbour_skills), dtype=np.int64)
    for j, s in enumerate(neighbour_skills):
        labels[j] = index.setdefault(s, len(index))
    return list(index), labels


@dataclass(frozen=True)
class Scored:
    """Per-candidate parts and final score, with `order` ranking the candidates best first."""

    bi_encoder: np.ndarray
    knn: np.ndarray
    score: np.ndarray
    order: np.ndarray


def score_candidates(
    bi_encoder: np.ndarray,
    neighbour_similarities: np.ndarray,
    neighbour_labels: np.ndarray,
    params: ScoringParams,
) -> Scored:
    """Score every candidate of one sentence and rank them.

    `bi_encoder[i]` is the exact b of candidate i; `neighbour_labels[j]` the candidate neighbour j votes for.
    Ties on the score are broken by the higher b, then by candidate index, so rankings are deterministic.
    """
    b = np.asarray(bi_encoder, dtype=np.float64)
    v = knn_vote(neighbour_similarities, neighbour_labels, b.size, params.tau, params.aggregation)
    s = interpolate(b, v, params.lam)
    order = np.lexsort((np.arange(b.size), -b, -s))
    return Scored(bi_encoder=b, knn=v, score=s, order=order)
