"""`knnbe-qdrant eval`: a benchmark file in, RP@5 / RP@10 / MRR out, for each scoring mode on the same encodings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._errors import InputFileError, InvalidInputError
from .._mapper import MODES, SkillMapper
from .benchmarks import GoldSentence, read_benchmark, resolve_gold
from .metrics import bootstrap_ci, evaluate, per_sentence

DEFAULT_DEPTH = 100


def run_eval(
    mapper: SkillMapper, path: str | Path, modes: Sequence[str] = ("knnbe",), depth: int = DEFAULT_DEPTH
) -> dict[str, dict]:
    """{mode: {"n", "rp@5", "rp@10", "mrr", "unknown_gold"}}; every mode ranks the same encodings."""
    items = read_benchmark(path)
    if not items:
        raise InputFileError(f"{path}: no sentence with a gold skill")
    return eval_items(mapper, items, modes, depth)


def eval_items(
    mapper: SkillMapper, items: Sequence[GoldSentence], modes: Sequence[str] = ("knnbe",), depth: int = DEFAULT_DEPTH,
    *, resolved: tuple[list[set[str]], list[str]] | None = None,
) -> dict[str, dict]:
    """As run_eval, for items already read; `resolved` is their resolve_gold result, where the caller has it."""
    golds, unknown = resolved or resolve_gold(items, mapper.store)
    sentences = [i.sentence for i in items]
    vectors = None if mapper.decompose else mapper.encode(sentences)
    report = {}
    for mode in modes:
        if mode not in MODES:
            raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}")
        results = (mapper.map(sentences, top=depth, mode=mode) if vectors is None
                   else mapper.map_vectors(sentences, vectors, top=depth, mode=mode))
        rankings = [[s.id for s in r.skills] for r in results]
        scores = evaluate(rankings, golds)
        intervals = {f"{m}_ci95": [round(x, 4) for x in bootstrap_ci(v)] for m, v in
                     per_sentence(rankings, golds).items()}
        report[mode] = {**scores, **intervals, "unknown_gold": len(unknown)}
    return report


def compare_decomposition(mapper: SkillMapper, path: str | Path, depth: int = DEFAULT_DEPTH) -> dict[str, Any]:
    """kNNBE with and without decomposition on one file, with the paired bootstrap interval of each gain (the
    same sentences, resampled together): {"n", "plain": {...}, "decomposed": {...}, "gain": {metric: [mean, lo,
    hi]}}."""
    items = read_benchmark(path)
    golds, _ = resolve_gold(items, mapper.store)
    sentences = [i.sentence for i in items]
    per = {}
    for decompose in (False, True):
        results = mapper.map(sentences, top=depth, decompose=decompose)
        per[decompose] = per_sentence([[s.id for s in r.skills] for r in results], golds)
    gain = {}
    for metric in per[False]:
        diff = per[True][metric] - per[False][metric]
        lo, hi = bootstrap_ci(diff)
        gain[metric] = [round(float(diff.mean()), 4), round(lo, 4), round(hi, 4)]
    return {"n": len(items), "plain": {m: round(float(v.mean()), 4) for m, v in per[False].items()},
            "decomposed": {m: round(float(v.mean()), 4) for m, v in per[True].items()}, "gain": gain}


def format_report(path: str, report: dict[str, dict]) -> str:
    lines = [f"{path}", f"  {'mode':<11} {'n':>4} {'RP@5':>6} {'RP@10':>6} {'MRR':>6}  gold labels not in taxonomy"]
    for mode, r in report.items():
        lines.append(
            f"  {mode:<11} {r['n']:>4} {100 * r['rp@5']:6.1f} {100 * r['rp@10']:6.1f} {100 * r['mrr']:6.1f}  "
            f"{r['unknown_gold']}"
        )
    return "\n".join(lines)


def to_json(report: dict[str, dict]) -> str:
    if len(report) == 1:
        return json.dumps(next(iter(report.values())))
    return json.dumps(report)
