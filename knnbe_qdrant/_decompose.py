"""Query decomposition: a sentence that names several skills is also mapped piece by piece, so that one embedding
does not collapse it onto its dominant topic. Pure: text in, pieces out; scores in, merged ranking out.

Pieces: the sentence split on commas, semicolons, colons, bullets, parentheses and the words "and", "or", "with",
"such as", "including", "as well as"; pieces of two or more words are kept (a lone word is usually a fragment, and
a skill named by one word is found by the whole sentence). A skill's score is the larger of its score for the whole
sentence and `weight` times its best score over the pieces; the result says which piece it came from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from ._results import SentenceResult, SkillMatch

DEFAULT_WEIGHT = 0.8
_SPLIT = re.compile(
    r"\s*(?:[,;:()\[\]•·|/]|\s-\s|\b(?:as well as|such as|including|and|or|with)\b)\s*", re.IGNORECASE
)


def pieces(sentence: str, min_words: int = 2) -> list[str]:
    """The distinct pieces of a sentence worth mapping on their own (none when it does not split)."""
    parts = [p.strip(" .!?-") for p in _SPLIT.split(sentence)]
    out = []
    for p in parts:
        if len(p.split()) >= min_words and p != sentence.strip(" .!?") and p not in out:
            out.append(p)
    return out if len(out) > 1 or (out and out[0] != sentence) else []


def merge(whole: SentenceResult, parts: Sequence[SentenceResult], top: int,
          weight: float = DEFAULT_WEIGHT) -> SentenceResult:
    """The whole sentence's result with its pieces' skills merged in: score = max(whole, weight * best piece);
    ties keep the whole sentence's match. A match that won through a piece carries that piece."""
    best: dict[str, SkillMatch] = {s.id: s for s in whole.skills}
    for part in parts:
        for s in part.skills:
            scaled = weight * s.score
            current = best.get(s.id)
            if current is None or scaled > current.score:
                best[s.id] = replace(s, score=scaled, piece=part.text)
    ranked = sorted(best.values(), key=lambda s: (-s.score, -s.bi_encoder, s.id))[:top]
    return SentenceResult(text=whole.text, skills=ranked)
