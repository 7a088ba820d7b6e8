"""What one forward pass gives the mapper: the texts' pooled unit vectors and, for token-level matching, each
text's content-token states (the transformer's last hidden states, special tokens left out) with the character
span of each token in its text, so a match can say which words it came from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Encoded:
    vectors: np.ndarray
    """(texts, dimension) float32, unit rows."""
    states: list[np.ndarray]
    """Per text: (content tokens, dimension) float32; never empty (a text of special tokens only keeps them)."""
    spans: list[list[tuple[int, int]]]
    """Per text: each content token's (start, end) character offsets in the text."""

    def __len__(self) -> int:
        return len(self.vectors)

    def __getitem__(self, rows: Sequence[int] | np.ndarray | slice) -> Encoded:
        if isinstance(rows, slice):
            return Encoded(self.vectors[rows], self.states[rows], self.spans[rows])
        picked = [int(r) for r in rows]
        return Encoded(self.vectors[picked], [self.states[r] for r in picked], [self.spans[r] for r in picked])

    @staticmethod
    def concat(parts: Sequence[Encoded], dimension: int) -> Encoded:
        if not parts:
            return Encoded(np.zeros((0, dimension), dtype=np.float32), [], [])
        return Encoded(np.concatenate([p.vectors for p in parts]), [s for p in parts for s in p.states],
                       [s for p in parts for s in p.spans])
