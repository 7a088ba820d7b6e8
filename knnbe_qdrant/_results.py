"""What mapping returns: per sentence, its skills ranked, each with its score parts and the neighbours that voted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class Evidence:
    """A memory sentence among the k nearest neighbours that voted for the skill."""

    text: str
    similarity: float


@dataclass(slots=True)
class SkillMatch:
    id: str
    label: str
    score: float
    """lam * bi_encoder + (1 - lam) * knn; with decomposition, a piece's match has that times the merge weight, and
    the sentence's kept best match at least the best merged score (_decompose.merge): scores fall down a ranking."""
    bi_encoder: float
    knn: float
    evidence: list[Evidence] = field(default_factory=list)
    piece: str | None = None
    """With decomposition: the piece of the sentence this match came from (its score is weighted); else None."""
    tokens: list[str] | None = None
    """With token-level matching: the words of the sentence the skill attended to most, in the sentence's order;
    else None."""

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "label": self.label, "score": self.score, "bi_encoder": self.bi_encoder, "knn": self.knn,
               "evidence": [{"text": e.text, "similarity": e.similarity} for e in self.evidence]}
        if self.piece is not None:
            out["piece"] = self.piece
        if self.tokens is not None:
            out["tokens"] = self.tokens
        return out


ATTENDED_SHARE = 0.5
ATTENDED_MAX = 3


def attended_words(text: str, spans: Sequence[tuple[int, int]], weights: np.ndarray) -> list[list[str]]:
    """For each column of `weights` (tokens, skills): the words holding the largest attention weights, until they
    hold ATTENDED_SHARE of what all words hold (punctuation shows no word and counts for nothing), ATTENDED_MAX
    words at most, in the text's order; a word-piece token shows as its whole word.

    The sentence's words are found once for all its skills (they cost more than the choice: mapping asks this for
    every match it returns)."""
    spans = spans[: len(weights)]
    words = [t for t, (a, b) in enumerate(spans) if any(c.isalnum() for c in text[a:b])]
    if not words:
        return [[] for _ in range(weights.shape[1])]
    whole = [_whole_word(text, *spans[t]) for t in words]
    held_by_word = np.asarray(weights, dtype=np.float64)[words]  # (words, skills)
    order = np.argsort(-held_by_word, axis=0, kind="stable")  # ties in the text's order, as a stable sort keeps
    totals = ATTENDED_SHARE * held_by_word.sum(axis=0)
    out = []
    for j in range(held_by_word.shape[1]):
        chosen: dict[tuple[int, int], None] = {}
        held = 0.0
        for w in order[:, j].tolist():
            if len(chosen) == ATTENDED_MAX or held >= totals[j]:
                break
            held += held_by_word[w, j]
            chosen.setdefault(whole[w])
        out.append([text[a:b] for a, b in sorted(chosen)])
    return out


def _whole_word(text: str, start: int, end: int) -> tuple[int, int]:
    while start > 0 and text[start - 1].isalnum():
        start -= 1
    while end < len(text) and text[end].isalnum():
        end += 1
    return start, end


@dataclass(slots=True)
class SentenceResult:
    text: str
    skills: list[SkillMatch]
    nearest_memory: float | None = None
    """Similarity of the nearest memory sentence (None without a kNN query, as in bi-encoder mode, or with no
    memory to see): how familiar the sentence is to the memory. Decomposition leaves familiar sentences whole."""

    def to_dict(self) -> dict[str, Any]:
        """The `--json` line format: {"text", "skills": [{"id", "label", "score", "bi_encoder", "knn", "evidence"}]}.

        Written out rather than dataclasses.asdict, which deep-copies recursively and costs 20x more: the service
        converts every result it sends."""
        return {"text": self.text, "skills": [s.to_dict() for s in self.skills]}
