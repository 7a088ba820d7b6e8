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
candidates (a generator), no longer a guarantee of the exact top results; the mapper's pool is the top
MIN_TOKEN_CANDIDATES by cosine plus the voters' skills, whatever the number of results asked for, and any further
hits rank after the pool, so that asking for more results never reorders the first ones.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ._errors import InvalidInputError

AGGREGATIONS = ("softmax", "uniform")
MIN_TOKEN_CANDIDATES = 32
"""With token-level matching, this many skills come from the cosine side into the pool the token score reorders.
Measured on validation on 2026-12-02 (results for the top 10): 16, 32, 64 and 100 were all within their paired
intervals of each other on TECH, HOUSE, transversal-dev and SkillSkape dev; 32 was never significantly worse."""
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
    clause_depth: int = 0
    """Clause coverage (with token matching, for the sentences below the token gate): each clause's best skill
    among the first `clause_depth` of the ranking comes right after the first (`cover_clauses`); 0 is off."""

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
        if isinstance(self.clause_depth, bool) or not isinstance(self.clause_depth, int) or self.clause_depth < 0:
            raise InvalidInputError(f"clause_depth must be an integer >= 0, got {self.clause_depth!r}")
        if not self.token_temperature > 0.0:
            raise InvalidInputError(f"token_temperature must be > 0, got {self.token_temperature}")
        if self.aggregation not in AGGREGATIONS:
            raise InvalidInputError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")


def neighbour_weights(similarities: np.ndarray, tau: float, aggregation: str = "softmax") -> np.ndarray:
    """Weight of each neighbour's vote; the weights of one sentence's neighbours sum to 1 (empty in, empty out)."""
    sims = np.asarray(similarities, dtype=np.float64)
    return neighbour_weights_batch(sims[None], np.ones((1, sims.size), dtype=bool), tau, aggregation)[0]


def neighbour_weights_batch(similarities: np.ndarray, present: np.ndarray, tau: float,
                            aggregation: str = "softmax") -> np.ndarray:
    """`neighbour_weights` for each row of (sentences, k) similarities, over the neighbours `present` marks (rows
    may have fewer than k); absent ones weigh 0."""
    sims = np.asarray(similarities, dtype=np.float64)
    count = present.sum(axis=1, keepdims=True)
    if aggregation == "uniform":
        return np.where(present, 1.0 / np.maximum(count, 1), 0.0)
    peak = np.where(present, sims, -np.inf).max(axis=1, keepdims=True, initial=-np.inf)
    z = np.where(present, (sims - np.where(count > 0, peak, 0.0)) / tau, -np.inf)  # the max shift keeps exp finite
    e = np.exp(z)
    return e / np.maximum(e.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)


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
    labels = np.asarray(labels, dtype=np.int64)
    return knn_vote_batch(np.asarray(similarities, dtype=np.float64)[None], labels[None], n_candidates, tau,
                          aggregation)[0]


def knn_vote_batch(similarities: np.ndarray, labels: np.ndarray, n_candidates: int, tau: float,
                   aggregation: str = "softmax") -> np.ndarray:
    """`knn_vote` for each row: (sentences, k) similarities and candidate columns (-1: no neighbour there) in,
    (sentences, n_candidates) votes out."""
    labels = np.asarray(labels, dtype=np.int64)
    present = labels >= 0
    weights = neighbour_weights_batch(similarities, present, tau, aggregation)
    rows = np.broadcast_to(np.arange(labels.shape[0])[:, None], labels.shape)
    flat = (rows * n_candidates + labels)[present]
    size = labels.shape[0] * n_candidates
    votes = np.bincount(flat, weights=weights[present], minlength=size)[:size]
    return votes.astype(np.float64, copy=False).reshape(labels.shape[0], n_candidates)  # no neighbour: int zeros


def token_attention(states: np.ndarray, skills: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """t(x, s) for each skill (row of `skills`, unit vectors) against one sentence's token `states` (tokens, d), and
    the attention each skill gives each token (tokens, skills), whose columns sum to 1. The training loss
    (encoding.token_loss) is the same formula in torch."""
    x = np.asarray(states, dtype=np.float32)
    t, w = token_attention_batch(x[None], np.ones((1, len(x)), dtype=bool), np.asarray(skills)[None], temperature)
    return t[0], w[0]


def token_attention_batch(states: np.ndarray, present: np.ndarray, skills: np.ndarray,
                          temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """`token_attention` for each row: token states (sentences, tokens, d) padded where `present` (sentences,
    tokens) is False, against each sentence's own candidates (sentences, candidates, d). Returns t (sentences,
    candidates) and the attention (sentences, tokens, candidates), 0 on padding."""
    x = np.asarray(states, dtype=np.float32)
    dots = np.matmul(x, np.asarray(skills, dtype=np.float32).transpose(0, 2, 1))
    cos = dots / np.maximum(np.linalg.norm(x, axis=2, keepdims=True), 1e-12)
    mask = present[:, :, None]
    z = np.where(mask, dots, -np.inf)
    z = (z - z.max(axis=1, keepdims=True, initial=-np.inf)) / temperature
    w = np.where(mask, np.exp(z), 0.0).astype(np.float32)
    w /= np.maximum(w.sum(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    return (w * cos).sum(axis=1).astype(np.float64), w


CLAUSE_SHARE = 0.5
"""A skill belongs to the clause that holds at least this share of its token attention (at least half: a skill
whose attention spreads over two clauses and the words between them belongs to none)."""


def clause_of_candidates(attention: np.ndarray, token_clause: np.ndarray, share: float = CLAUSE_SHARE
                         ) -> np.ndarray:
    """For each sentence's candidates, the clause holding `share` or more of its token attention, -1 if none:
    attention (sentences, tokens, candidates) as `token_attention_batch` gives it, and each token's clause
    (sentences, tokens), -1 for a token in none (and for padding)."""
    n_clauses = int(token_clause.max(initial=-1)) + 1
    if n_clauses == 0:
        return np.full((attention.shape[0], attention.shape[2]), -1, dtype=np.int64)
    member = (token_clause[:, :, None] == np.arange(n_clauses)).astype(np.float32)  # (sentences, tokens, clauses)
    held = np.einsum("ntk,ntc->nkc", member, np.asarray(attention, dtype=np.float32))
    return np.where(held.max(axis=1) >= share, held.argmax(axis=1), -1)


def cover_clauses(scored: Scored, clause: np.ndarray, depth: int, protect: int = 1) -> Scored:
    """Clause coverage: in each row, the best-ranked candidate of each clause (`clause`, (sentences, candidates),
    -1 for none) among the first `depth` of `scored.order` moves up to right after the first `protect`, the
    moved ones in their own order; the rest keep theirs. A skill named in a clause the memory's neighbours do
    not speak of (the vote goes to the sentence's dominant topic) so reaches the head of the ranking, while the
    set of the first `depth` is unchanged. Scores are made to fall down the new order (a moved candidate takes
    the score of the best one it passed); `bi_encoder` and `knn` stay each candidate's own."""
    n = scored.order.shape[0]
    depth = min(depth, scored.order.shape[1])
    if depth == 0 or n == 0:
        return scored
    head = scored.order[:, :depth]
    rows = np.arange(n)[:, None]
    group = clause[rows, head]
    position = np.arange(depth)
    earlier = (group[:, :, None] == group[:, None, :]) & (position[None, :, None] > position[None, None, :])
    first = (group >= 0) & ~earlier.any(axis=2)  # the clause's best within the head
    moved = first & (position >= protect)
    key = np.where(position < protect, position - 2 * depth, np.where(moved, position - depth, position))
    new_head = np.take_along_axis(head, np.argsort(key, axis=1, kind="stable"), axis=1)
    score = scored.score.copy()
    head_scores = score[rows, new_head]
    score[rows, new_head] = np.maximum.accumulate(head_scores[:, ::-1], axis=1)[:, ::-1]
    order = scored.order.copy()
    order[:, :depth] = new_head
    return Scored(bi_encoder=scored.bi_encoder, knn=scored.knn, score=score, order=order)


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
    codes: dict[K, int] = {}
    top = np.array([[codes.setdefault(s, len(codes)) for s in top_skills]], dtype=np.int64).reshape(1, -1)
    votes = np.array([[codes.setdefault(s, len(codes)) for s in neighbour_skills]], dtype=np.int64).reshape(1, -1)
    candidates, labels = union_batch(top, votes)
    keys = list(codes)
    return [keys[c] for c in candidates[0] if c >= 0], labels[0]


def union_batch(top: np.ndarray, votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`union_candidates` for each row, over integer skill codes (-1: padding): top (sentences, N) and the
    neighbours' codes (sentences, k) in; the candidates' codes (sentences, C), -1-padded, and each neighbour's
    candidate column (sentences, k), -1 where there is none, out. Row by row, a code's column is the rank of its
    first appearance in the row's top codes followed by its neighbours' codes."""
    n = top.shape[0]
    both = np.concatenate([np.asarray(top, dtype=np.int64), np.asarray(votes, dtype=np.int64)], axis=1)
    width = both.shape[1]
    flat = both.ravel()
    present = np.flatnonzero(flat >= 0)
    span = int(flat.max()) + 1 if present.size else 1
    keys = (present // width) * span + flat[present]  # one key per (row, code)
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    first_at = present[first]  # where each (row, code) first appears, row-major: its row and its position
    rows = first_at // width
    by_place = np.lexsort((first_at % width, rows))
    counts = np.bincount(rows, minlength=n)
    column = np.empty(unique.size, dtype=np.int64)
    column[by_place] = np.arange(unique.size) - np.repeat(np.cumsum(counts) - counts, counts)
    candidates = np.full((n, int(counts.max(initial=0))), -1, dtype=np.int64)
    candidates[rows, column] = unique - rows * span
    columns = np.full(flat.size, -1, dtype=np.int64)
    columns[present] = column[inverse.ravel()]
    return candidates, columns.reshape(n, width)[:, top.shape[1]:]


@dataclass(frozen=True)
class Scored:
    """Per-candidate parts and final score, with `order` ranking the candidates best first (for a batch: one row
    per sentence)."""

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
    scored = score_batch(b[None], np.ones((1, b.size), dtype=bool), np.asarray(neighbour_similarities)[None],
                         np.asarray(neighbour_labels, dtype=np.int64)[None], params)
    return Scored(scored.bi_encoder[0], scored.knn[0], scored.score[0], scored.order[0])


def score_batch(bi_encoder: np.ndarray, ranked: np.ndarray, neighbour_similarities: np.ndarray,
                neighbour_labels: np.ndarray, params: ScoringParams, later: np.ndarray | None = None) -> Scored:
    """`score_candidates` for each row of (sentences, candidates) b, as one array operation. `ranked` marks the
    candidates that may rank (padding, and skills that vote but may not be shown, are False: their row's `order`
    lists them last); neighbour labels are candidate columns, -1 where a row has no neighbour. Candidates marked
    `later` rank after all the others that may rank (the mapper's hits past the token-matching pool)."""
    b = np.asarray(bi_encoder, dtype=np.float64)
    v = knn_vote_batch(neighbour_similarities, neighbour_labels, b.shape[1], params.tau, params.aggregation)
    s = interpolate(b, v, params.lam)
    index = np.broadcast_to(np.arange(b.shape[1]), b.shape)
    tier = np.zeros(b.shape, dtype=bool) if later is None else later
    order = np.lexsort((index, -b, -s, tier, ~ranked), axis=-1)
    return Scored(bi_encoder=b, knn=v, score=s, order=order)
