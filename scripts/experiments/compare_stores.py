"""Paired comparison of two stores (e.g. two encoders) on the validation splits and the SkillSkape dev check: each
store maps with its own scoring parameters (`tune` saves them in the store), exact search; per-sentence RP@5, RP@10
and MRR, and the paired bootstrap interval of B - A.

    .venv/bin/python scripts/experiments/compare_stores.py STORE_A STORE_B
"""

from __future__ import annotations

import sys

from knnbe_qdrant import EdgeStore, Encoder, SkillMapper
from knnbe_qdrant.evaluation.benchmarks import SKILLSKAPE_DEV, read_benchmark, resolve_gold
from knnbe_qdrant.evaluation.metrics import bootstrap_ci, per_sentence

SPLITS = ("tech-validation", "house-validation", SKILLSKAPE_DEV)


def scores(path: str) -> dict[str, dict]:
    store = EdgeStore(path)
    mapper = SkillMapper(store, Encoder(store.manifest.model), exact=True)
    print(f"{path}: {store.manifest.model}, {mapper.params}")
    out = {}
    for split in SPLITS:
        items = read_benchmark(split)
        golds, _ = resolve_gold(items, store)
        results = mapper.map([i.sentence for i in items], top=100)
        out[split] = per_sentence([[m.id for m in r.skills] for r in results], golds)
    store.close()
    return out


def main() -> None:
    a, b = scores(sys.argv[1]), scores(sys.argv[2])
    for split in SPLITS:
        cells = []
        for metric in ("rp@5", "rp@10", "mrr"):
            diff = b[split][metric] - a[split][metric]
            lo, hi = bootstrap_ci(diff)
            cells.append(f"{metric} {100 * a[split][metric].mean():.1f} -> {100 * b[split][metric].mean():.1f} "
                         f"({100 * diff.mean():+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}])")
        print(f"{split}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
