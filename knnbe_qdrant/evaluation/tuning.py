"""`knnbe-qdrant tune`: choose λ, k, τ and the aggregation on validation files, and store them as the store's
defaults (the manifest's `params`, which `SkillMapper` reads when no parameters are given).

Each file's sentences are encoded and sent to Qdrant once, with the widest limits of the grid; every grid point is
then scored from those results by the same `map_vectors` the product uses (a smaller k is a prefix of the wider
neighbour list), so a grid of hundreds of points costs seconds.

With `decompose`, each file's sentences and their pieces are mapped together, as `SkillMapper.map` does, and the
merge settings (`_decompose.GRID`) are searched as well; the store then maps with decomposition by default.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import _schema as S
from .._data import TUNED_PARAMS, data_file
from .._decompose import GRID as MERGE_GRID
from .._decompose import MergeParams, collapse, expand
from .._mapper import TIE_MARGIN, SkillMapper
from .._scoring import ScoringParams
from .._tenancy import visible_memory, visible_skills
from ..encoding import Encoded
from .benchmarks import read_benchmark, resolve_gold
from .metrics import evaluate

GRID: Mapping[str, Sequence[Any]] = {
    "lam": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
    "k": (8, 16, 32, 64, 128),
    "tau": (0.02, 0.05, 0.1, 0.2),
    "aggregation": ("softmax", "uniform"),
}
DEPTH = 100
TOKEN_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def token_grid(recipe: Mapping[str, Any], current: ScoringParams) -> dict[str, tuple]:
    """Token-level matching's share of b is searched for a model trained with it (its recipe says so), at the
    temperature it was trained with. Any other model is tuned with the pooled cosine alone and, where the mapper
    already maps with tokens (the shipped model's defaults do), with its own α, T and gate as a second candidate:
    `tune` must never drop token matching only because the grid left it out. (A wider search of the weight is
    asked for explicitly, `tune --token-weights 0,0.25,0.5,0.75,1`: it multiplies the time by the number of weights.)"""
    if recipe.get("token_attention"):
        return {"token_weight": TOKEN_WEIGHTS, "token_temperature": (float(recipe.get("token_temperature", 1.0)),)}
    if current.token_weight > 0:
        return {"token_weight": (0.0, current.token_weight), "token_temperature": (current.token_temperature,),
                "token_gate": (current.token_gate,)}
    return {"token_weight": (0.0,), "token_temperature": (ScoringParams().token_temperature,)}


class _Replay:
    """The store, except that each batched query is answered from one wider query made up front."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.answers: dict[tuple[str, bytes], list] = {}

    def prepare(self, vectors: np.ndarray, where: dict[str, Any], limits: dict[str, int], **search: Any) -> None:
        for collection, limit in limits.items():
            payload = [S.F_SKILL_ID, S.F_LABEL] if collection == S.SKILLS else [S.F_SKILL_ID, S.F_TEXT]
            self.answers[(collection, vectors.tobytes())] = self.store.query_batch(
                collection, vectors, limit, where=where[collection], payload=payload, **search
            )

    def query_batch(self, collection: str, vectors: np.ndarray, limit: int, **_: Any) -> list:
        return [hits[:limit] for hits in self.answers[(collection, vectors.tobytes())]]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def tune(mapper: SkillMapper, files: Sequence[str | Path], grid: Mapping[str, Sequence[Any]] | None = None,
         checks: Sequence[str | Path] = (), *, decompose: bool | None = None) -> list[dict[str, Any]]:
    """Every grid point with its metrics per file and the objective (mean of RP@5 and RP@10 over `files`), best
    first. `checks` are evaluated at every point too, and reported, but do not enter the objective. With
    `decompose` (default: as the mapper maps), a point also has the merge settings (`weight`, `protect`: from `grid`,
    else `_decompose.GRID`)."""
    decompose = mapper.decompose if decompose is None else decompose
    grid = {**GRID, **(MERGE_GRID if decompose else {}), **token_grid(mapper.encoder.recipe, mapper.params),
            **(grid or {})}
    gates = grid.get("gate", (MergeParams().gate,))
    merges = ([MergeParams(w, p, g) for w, p, g in itertools.product(grid["weight"], grid["protect"], gates)]
              if decompose else [None])
    replay = _Replay(mapper.store)
    data = []
    for path in [*files, *checks]:
        items = read_benchmark(path)
        golds, _ = resolve_gold(items, mapper.store)
        sentences = [i.sentence for i in items]
        texts, parts = expand(sentences) if decompose else (sentences, [])
        vectors: np.ndarray | Encoded = (mapper.encoder.encode_tokens(texts) if max(grid["token_weight"]) > 0
                                         else mapper.encoder.encode(texts))
        replay.prepare(
            vectors.vectors if isinstance(vectors, Encoded) else vectors,
            {S.SKILLS: visible_skills(None), S.MEMORY: visible_memory(None)},
            {S.SKILLS: DEPTH, S.MEMORY: max(grid["k"]) + TIE_MARGIN}, exact=mapper.exact, hnsw_ef=mapper.hnsw_ef,
        )
        data.append((str(path), texts, parts, vectors, golds))
    tuned = SkillMapper.__new__(SkillMapper)
    tuned.__dict__.update(mapper.__dict__, store=replay)
    rows = []
    gates_t = grid.get("token_gate", (ScoringParams().token_gate,))
    for lam, k, tau, aggregation, alpha, temperature, token_gate in itertools.product(
            grid["lam"], grid["k"], grid["tau"], grid["aggregation"], grid["token_weight"], grid["token_temperature"],
            gates_t):
        if aggregation == "uniform" and tau != grid["tau"][0]:
            continue  # τ does not enter the uniform vote
        if alpha == 0 and (temperature != grid["token_temperature"][0] or token_gate != gates_t[0]):
            continue  # nor T and the gate a b without tokens
        # Clause coverage is carried, not searched: its depth was chosen apart (docs/accuracy.md).
        tuned.params = ScoringParams(lam=lam, k=k, tau=tau, aggregation=aggregation, token_weight=alpha,
                                     token_temperature=temperature, token_gate=token_gate,
                                     clause_depth=mapper.params.clause_depth)
        point = {path: (tuned.map_vectors(texts, vectors, top=DEPTH), parts, golds)
                 for path, texts, parts, vectors, golds in data}
        for merge in merges:
            row: dict[str, Any] = {"lam": lam, "k": k, "tau": tau, "aggregation": aggregation,
                                   "token_weight": alpha, "token_temperature": temperature, "token_gate": token_gate,
                                   "clause_depth": tuned.params.clause_depth}
            if merge is not None:
                row.update(weight=merge.weight, protect=merge.protect, gate=merge.gate)
            for path, (results, parts, golds) in point.items():
                ranked = collapse(results, parts, DEPTH, merge) if merge is not None else results
                row[path] = evaluate([[s.id for s in r.skills] for r in ranked], golds)
            row["objective"] = float(np.mean([(row[str(p)]["rp@5"] + row[str(p)]["rp@10"]) / 2 for p in files]))
            rows.append(row)
    rows.sort(key=lambda r: -r["objective"])
    return rows


def _record(best: dict[str, Any], files: Sequence[str | Path], mapper: SkillMapper) -> dict[str, Any]:
    manifest = mapper.store.manifest
    record = {
        "lam": best["lam"], "k": best["k"], "tau": best["tau"], "aggregation": best["aggregation"],
        "token_weight": best.get("token_weight", 0.0), "token_temperature": best.get("token_temperature", 1.0),
        "token_gate": best.get("token_gate", ScoringParams().token_gate),
        "clause_depth": best.get("clause_depth", ScoringParams().clause_depth),
        "tuned_on": [Path(f).name for f in files], "tuned_at": S.utc_now(),
        "memory": manifest.sources.get("memory"), "skill_text": manifest.skill_text,
    }
    if "weight" in best:  # tuned with decomposition: the store maps with it by default
        record["decompose"] = {"weight": best["weight"], "protect": best["protect"], "gate": best["gate"]}
    return record


def save_params(mapper: SkillMapper, best: dict[str, Any], files: Sequence[str | Path]) -> None:
    """The store's own defaults (its manifest)."""
    mapper.store.update_manifest(params=_record(best, files, mapper))


def save_package_defaults(mapper: SkillMapper, best: dict[str, Any], files: Sequence[str | Path]) -> Path:
    """The defaults every store built with this model gets unless it was tuned itself (maintainers: commit it)."""
    path = data_file(TUNED_PARAMS)
    table = json.loads(path.read_text()) if path.exists() else {}
    table[mapper.encoder.name] = _record(best, files, mapper)
    path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    return path

