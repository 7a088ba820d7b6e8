"""Unseen skills without retraining: take a set of skills' memory out of the store, measure on the validation
sentences of those skills, put the very same points back (same ids, vectors and payloads: nothing is re-encoded and
no model changes), measure again.

The store is edited for the length of the run. The removed points are written to a JSONL backup (text, skill,
source; `memory import` reads it) before anything is deleted, and are upserted back whatever happens next — an
error, Ctrl-C — so the store ends as it began. Only a hard kill between delete and restore needs the backup.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import _schema as S
from .._errors import InvalidInputError, StoreError
from .._mapper import MODES, SkillMapper
from ..store.base import Record, Where, vectors_of
from .benchmarks import GoldSentence, read_benchmark, resolve_gold
from .evaluate import eval_items


def pick_skills(golds: Sequence[set[str]], fraction: float, seed: int) -> set[str]:
    """A seeded sample of `fraction` of the gold skills (sorted first, so the sample depends on the seed only)."""
    if not 0 < fraction <= 1:
        raise InvalidInputError(f"fraction must be in (0, 1], got {fraction}")
    pool = sorted({g for gold in golds for g in gold if not g.startswith("unknown:")})
    if not pool:
        raise InvalidInputError("no gold skill of the files is in the store's taxonomy")
    return set(random.Random(seed).sample(pool, max(1, round(fraction * len(pool)))))


def _write_backup(path: Path, records: Sequence[Record]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            row = {"text": r.payload[S.F_TEXT], "skill": r.payload[S.F_SKILL_ID], "source": r.payload.get(S.F_SOURCE)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def unseen_skills(
    mapper: SkillMapper,
    files: Sequence[str | Path],
    *,
    fraction: float = 0.5,
    seed: int = 0,
    backup: str | Path = "unseen-skills-backup.jsonl",
    modes: Sequence[str] = MODES,
) -> dict[str, Any]:
    """{"skills", "memory_points", "sentences", "before": {mode: scores}, "after": {mode: scores}} where "before" is
    with the chosen skills' global memory removed and "after" with it upserted back."""
    items: list[GoldSentence] = [item for f in files for item in read_benchmark(f)]
    golds, _ = resolve_gold(items, mapper.store)
    chosen = pick_skills(golds, fraction, seed)
    subset = [item for item, gold in zip(items, golds) if gold & chosen]
    resolved = resolve_gold(subset, mapper.store)  # skills are not edited here: one resolution serves both evaluations

    store = mapper.store
    where = Where(must={S.F_TENANT: S.GLOBAL_TENANT, S.F_SKILL_ID: sorted(chosen)})
    ids = [r.id for r in store.scroll(S.MEMORY, where=where, payload=False)]
    records = store.retrieve(S.MEMORY, ids, with_vectors=True) if ids else []
    if len(records) != len(ids):
        raise StoreError(f"{store.describe()}: memory changed while it was read; run again")
    _write_backup(Path(backup), records)

    store.delete(S.MEMORY, ids)
    try:
        before = eval_items(mapper, subset, modes, resolved=resolved)
    finally:
        if records:
            store.upsert(S.MEMORY, [r.id for r in records], vectors_of(records),
                         [r.payload for r in records])
    after = eval_items(mapper, subset, modes, resolved=resolved)
    restored = store.count(S.MEMORY, where=where)
    if restored != len(ids):
        raise StoreError(
            f"{store.describe()}: {restored} of {len(ids)} memory points are back; import {backup} to restore the rest")
    Path(backup).unlink()
    return {"skills": len(chosen), "memory_points": len(ids), "sentences": len(subset),
            "before": before, "after": after}
