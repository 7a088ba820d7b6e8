"""Query decomposition: a sentence that names several skills is also mapped piece by piece, so that one embedding
does not collapse it onto its dominant topic. Pure: text in, pieces out; scores in, merged ranking out.

Pieces: the sentence split on commas, semicolons, colons, bullets, parentheses and the words "and", "or", "with",
"such as", "including", "as well as"; pieces with two or more words that are not function words or job-ad
boilerplate are kept (a lone word is usually a fragment, a skill named by one word is found by the whole sentence,
and a clause such as "You will design" names no skill of its own). The whole sentence's best `protect` skills keep their
places; below them, a skill's score is the larger of its score for the whole sentence and `weight` times its best
score over the pieces, and the result says which piece it came from. Pieces add the skills one embedding drowns;
protecting the top keeps a piece such as "You will design" from pushing generic skills above the sentence's main
one (on SkillSkape dev, MRR −11.8 without protection, −1.7 with the top one protected).

A sentence the memory already knows (its nearest memory sentence at similarity `gate` or more) stays whole: the
memory's labelled sentences carry all the skills of a multi-skill sentence, so the kNN vote already covers them,
and pieces only add noise there (SkillSkape dev RP@5 −3.3 without the gate, −0.3 with it; TECH and HOUSE
validation unchanged, their sentences being mostly unfamiliar: docs/accuracy.md).

Mapping (the mapper, the service's batcher) runs in two passes: map the sentences; map the pieces of those the
memory does not know (`pieces_to_map`); `fold` the piece results into the sentences'. The memory-familiar sentences'
pieces are never encoded: most of SkillSkape's sentences, few of real postings'. `tune`, which scores many merge
settings on one mapping, maps every piece in one pass (`expand`, then `collapse`); `merge` applies the gate itself,
so both give the same rankings.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice

import numpy as np

from ._errors import InvalidInputError
from ._results import SentenceResult, SkillMatch

DEFAULT_WEIGHT = 0.8
DEFAULT_PROTECT = 1
"""Chosen on TECH + HOUSE validation (mean RP@5 and RP@10 over weight 0.7/0.8/0.9 × protect 0–3; docs/accuracy.md)."""
DEFAULT_GATE = 0.75
"""Chosen on TECH + HOUSE validation and one half of SkillSkape dev (the other half kept to check it)."""
MAX_PIECES = 32
"""At most this many pieces of one sentence are mapped, its first ones: a sentence splitting into more is a list
pasted as one line, whose cost would otherwise grow with its length (validation: one SkillSkape dev sentence of
1,366 splits into more, 49)."""
GRID = {"weight": (0.7, 0.8, 0.9), "protect": (0, 1, 2)}
"""What `tune --decompose` searches besides λ, k, τ (the gate stays at its default: TECH and HOUSE, the tuning
files, barely tell gates apart)."""


@dataclass(frozen=True)
class MergeParams:
    """How piece rankings merge into the sentence's (see `merge`); `tune --decompose` saves a store's own."""

    weight: float = DEFAULT_WEIGHT
    protect: int = DEFAULT_PROTECT
    gate: float = DEFAULT_GATE

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not 0 < self.weight <= 1:
            raise InvalidInputError(f"decomposition weight must be in (0, 1], got {self.weight!r}")
        if isinstance(self.protect, bool) or not isinstance(self.protect, int) or self.protect < 0:
            raise InvalidInputError(f"decomposition protect must be an integer >= 0, got {self.protect!r}")
        if isinstance(self.gate, bool) or not isinstance(self.gate, (int, float)) or not self.gate > 0:
            raise InvalidInputError(f"decomposition gate must be > 0 (above 1: never), got {self.gate!r}")

    @classmethod
    def from_record(cls, record: object) -> MergeParams:
        """From tuned parameters' `decompose` entry ({"weight", "protect", "gate"}; a missing one takes its
        default); the defaults when there is none."""
        if not record:
            return cls()
        if not isinstance(record, dict) or set(record) - {"weight", "protect", "gate"}:
            raise InvalidInputError(f"tuned parameters: 'decompose' must hold weight, protect, gate; got {record!r}")
        return cls(**record)

_SPLIT = re.compile(
    r"\s*(?:[,;:()\[\]•·|/]|\s-\s|\b(?:as well as|such as|including|and|or|with)\b)\s*", re.IGNORECASE
)


NAMING_NOTHING = frozenset({
    "a", "an", "the", "this", "that", "these", "those", "it", "its", "our", "your", "their", "my", "his", "her",
    "we", "you", "they", "i", "he", "she", "who", "whom", "which", "what", "us", "them", "will", "would", "shall",
    "should", "can", "could", "may", "might", "must", "be", "is", "are", "am", "was", "were", "been", "being",
    "have", "has", "had", "do", "does", "did", "to", "of", "in", "on", "at", "by", "for", "from", "with", "as",
    "into", "about", "than", "then", "so", "also", "very", "all", "any", "some", "each", "such", "looking", "seek",
    "seeking", "join", "joining", "offer", "offers", "candidate", "ideal", "successful", "role", "position",
    "opportunity"
})
"""Words that name no skill: function words and the boilerplate of job ads. A piece needs two other words to be
mapped on its own: "You will design" and "We are looking for" do not, "patient education" and "maintain REST APIs in
Python" do (on the default store "You will design" brought *think creatively*, *develop design plans*)."""


def names_something(piece: str, min_words: int = 2) -> bool:
    words = re.findall(r"[^\W_]+(?:[.+#-][^\W_]+)*[+#]*", piece)
    return sum(w.lower() not in NAMING_NOTHING for w in words) >= min_words


def _parts(sentence: str) -> Iterator[tuple[int, int]]:
    """The (start, end) of each part between separators, without the punctuation around it."""
    start = 0
    for cut in [*_SPLIT.finditer(sentence), None]:
        end = len(sentence) if cut is None else cut.start()
        part = sentence[start:end]
        left = len(part) - len(part.lstrip(" .!?-"))
        right = len(part.rstrip(" .!?-"))
        if right > left:
            yield start + left, start + right
        if cut is not None:
            start = cut.end()


def _naming_parts(sentence: str, min_words: int = 2) -> Iterator[tuple[int, int]]:
    """The (start, end) of each part that names something (`names_something`), lazily: a pasted list can split
    into thousands, and callers stop at MAX_PIECES."""
    return ((a, b) for a, b in _parts(sentence) if names_something(sentence[a:b], min_words))


def pieces(sentence: str, min_words: int = 2) -> list[str]:
    """The distinct pieces of a sentence worth mapping on their own (each naming something: `names_something`), at
    most MAX_PIECES (none when it does not split)."""
    whole = sentence.strip(" .!?")
    out: dict[str, None] = {}  # ordered and O(1) to test: a pasted list can split into thousands
    for start, end in _naming_parts(sentence, min_words):
        p = sentence[start:end]
        if p != whole:
            out.setdefault(p)
            if len(out) == MAX_PIECES:
                break
    return list(out)


def clause_of_tokens(sentence: str, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """For each token (its character span in the sentence), the clause it lies in: the sentence's pieces that
    name something (as `pieces` splits it), numbered in order, at most MAX_PIECES; -1 for a token in no such
    piece (a separator, a clause naming nothing). All -1 for a sentence of fewer than two such clauses: its one
    clause is the whole sentence."""
    out = [-1] * len(spans)
    clauses = list(islice(_naming_parts(sentence), MAX_PIECES)) if _SPLIT.search(sentence) else []
    if len(clauses) >= 2:
        # Tokens and clauses both run left to right: one walk (a loop over a sentence's ~20 tokens costs less than
        # the array operations would).
        at = 0
        for t, (start, end) in enumerate(spans):
            while at < len(clauses) and clauses[at][1] < end:
                at += 1
            if at == len(clauses):
                break
            if start >= clauses[at][0]:
                out[t] = at
    return np.array(out, dtype=np.int64)


def familiar(whole: SentenceResult, params: MergeParams) -> bool:
    """Whether the memory knows the sentence well enough that it stays whole."""
    return whole.nearest_memory is not None and whole.nearest_memory >= params.gate


def pieces_to_map(wholes: Sequence[SentenceResult], params: MergeParams) -> list[list[str]]:
    """Each mapped sentence's pieces that still need mapping: none for a sentence the memory knows."""
    return [[] if familiar(w, params) else pieces(w.text) for w in wholes]


def fold(wholes: Sequence[SentenceResult], mapped: Sequence[SentenceResult], parts: Sequence[Sequence[str]],
         top: int, params: MergeParams = MergeParams()) -> list[SentenceResult]:
    """One result per sentence: `wholes` with their pieces' results (`mapped`, all of `parts` in order) merged in."""
    out, at = [], 0
    for whole, ps in zip(wholes, parts, strict=True):
        out.append(merge(whole, mapped[at : at + len(ps)], top, params))
        at += len(ps)
    return out


def expand(sentences: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """The texts to map for decomposed `sentences`: the sentences themselves, then every sentence's pieces in order;
    and each sentence's pieces, which `collapse` needs to fold the results back."""
    parts = [pieces(s) for s in sentences]
    return [*sentences, *(p for ps in parts for p in ps)], parts


def collapse(results: Sequence[SentenceResult], parts: Sequence[Sequence[str]], top: int,
             params: MergeParams = MergeParams()) -> list[SentenceResult]:
    """One result per sentence from the results of `expand`'s texts, in the same order."""
    return fold(results[: len(parts)], results[len(parts) :], parts, top, params)


def merge(whole: SentenceResult, parts: Sequence[SentenceResult], top: int,
          params: MergeParams = MergeParams()) -> SentenceResult:
    """The whole sentence's result with its pieces' skills merged in: its first `protect` matches stay first; the
    others rank by max(whole, weight * best piece), ties keeping the whole sentence's match. A match that won
    through a piece carries that piece. Scores fall down the ranking, as every caller may assume: a kept match
    whose score is below the best merged one takes that score (its `bi_encoder` and `knn` stay its own). A sentence
    whose nearest memory sentence is at `gate` or above stays whole."""
    if familiar(whole, params):
        return replace(whole, skills=whole.skills[:top])
    kept = whole.skills[: params.protect]
    best: dict[str, SkillMatch] = {s.id: s for s in whole.skills[params.protect :]}
    skip = {s.id for s in kept}
    for part in parts:
        for s in part.skills:
            scaled = params.weight * s.score
            current = best.get(s.id)
            if s.id not in skip and (current is None or scaled > current.score):
                best[s.id] = replace(s, score=scaled, piece=part.text)
    ranked = sorted(best.values(), key=lambda s: (-s.score, -s.bi_encoder, s.id))
    if ranked:
        kept = [replace(s, score=ranked[0].score) if s.score < ranked[0].score else s for s in kept]
    return replace(whole, skills=[*kept, *ranked][:top])
