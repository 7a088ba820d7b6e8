"""One batch's candidate skills as arrays, for scoring the whole batch at once (`_scoring.score_batch`): what the
two queries returned, coded and laid out one row per sentence."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _schema as S
from ._scoring import union_batch
from .store.base import Hit

if TYPE_CHECKING:
    from ._lookups import Voters


def _padded(lists: list[list[Any]], fill: Any, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows as one (rows, longest) array padded with `fill`, and the mask of the real entries."""
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    width = int(lengths.max(initial=0))
    present = np.arange(width) < lengths[:, None]
    out = np.full((len(lists), width), fill, dtype=dtype)
    out[present] = np.fromiter(chain.from_iterable(lists), dtype=dtype, count=int(lengths.sum()))
    return out, present


def one_hit_per_skill(hits: list[Hit]) -> list[Hit]:
    """The hits with each skill id once, at its best-scored hit: a tenant's skill and a global one may share an id
    (the global one added later), and both come back from one skills query. A hit without a text id and label (a
    point another program wrote into the collection, or a damaged one) is left out: nothing can be shown for it,
    and one such point failed every map that met it, every tenant's."""
    shown = [h for h in hits if S.has_texts(h.payload, S.F_SKILL_ID, S.F_LABEL)]
    if len({h.payload[S.F_SKILL_ID] for h in shown}) == len(hits):
        return hits
    first: dict[str, Hit] = {}
    for h in shown:
        first.setdefault(h.payload[S.F_SKILL_ID], h)
    return list(first.values())


@dataclass
class Candidates:
    """One batch's candidates as arrays (one row per sentence): skill ids are coded as integers, the skills
    query's hits take the first columns of their row, in order (their b is the engine's score), then every other
    skill a neighbour votes for, in first-seen order (`_scoring.union_batch`)."""

    ids: list[str]
    codes: dict[str, int]
    candidates: np.ndarray  # (sentences, C) skill codes, -1 = padding
    is_top: np.ndarray  # (sentences, C) the column is one of the skills query's hits
    top_scores: np.ndarray  # the hits' scores, in the order of is_top's True cells
    vote_sims: np.ndarray  # (sentences, k) each neighbour's similarity
    vote_cols: np.ndarray  # (sentences, k) the column it votes for, -1 = no neighbour
    closest: np.ndarray  # (sentences,) the nearest neighbour's similarity, NaN without one

    @classmethod
    def of(cls, skill_hits: list[list[Hit]], voters: Voters) -> Candidates:
        """The batch's arrays; `skill_hits` must hold one hit per skill (`one_hit_per_skill`). The voters' skills
        are coded in one array operation (their codes are the payload table's); the hits' by their ids."""
        voting = voters.skills >= 0
        used, local = np.unique(voters.skills[voting], return_inverse=True)
        codes = {voters.skill_ids[g]: i for i, g in enumerate(used.tolist())}
        votes = np.full(voters.skills.shape, -1, dtype=np.int64)
        votes[voting] = local
        code = codes.setdefault
        top, top_present = _padded([[code(h.payload[S.F_SKILL_ID], len(codes)) for h in hits] for hits in skill_hits],
                                   -1, np.int64)
        scores, _ = _padded([[h.score for h in hits] for hits in skill_hits], 0.0, np.float64)
        candidates, vote_cols = union_batch(top, votes)
        is_top = np.zeros(candidates.shape, dtype=bool)
        is_top[:, : top.shape[1]] = top_present[:, : candidates.shape[1]]
        sims = voters.scores
        closest = sims[:, 0] if sims.shape[1] else np.full(len(skill_hits), np.nan)
        return cls(list(codes), codes, candidates, is_top, scores[top_present], sims, vote_cols, closest)

    @property
    def knn_only(self) -> np.ndarray:
        """(sentences, C): the skills a sentence has only from its neighbours."""
        return (self.candidates >= 0) & ~self.is_top

    def knn_only_ids(self) -> list[str]:
        """Skills that some sentence has only from its neighbours (one sentence's hit may be another's kNN-only)."""
        return sorted(self.ids[c] for c in np.unique(self.candidates[self.knn_only]).tolist())

    def extra_rows(self, extra_labels: dict[str, str]) -> np.ndarray:
        """For each kNN-only cell, its row in the matrix of `_skill_vectors` (whose order `extra_labels` keeps);
        -1 elsewhere and for a skill that came back without a vector."""
        row_of = np.full(len(self.ids) + 1, -1, dtype=np.int64)
        for j, sid in enumerate(extra_labels):
            row_of[self.codes[sid]] = j
        return np.where(self.knn_only, row_of[self.candidates], -1)

    def past_pool(self, pool: int) -> np.ndarray:
        """(sentences, C): the skills query's hits past its first `pool` that no neighbour voted for."""
        voted = np.zeros(self.candidates.shape, dtype=bool)
        present = self.vote_cols >= 0
        voted[np.nonzero(present)[0], self.vote_cols[present]] = True
        return self.is_top & (np.arange(self.candidates.shape[1]) >= pool) & ~voted
