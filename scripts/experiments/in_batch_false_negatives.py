"""How often in-batch negatives are in fact positives (accuracy issue, item 2: multi-skill sentences as
multi-positive). See docs/accuracy.md.

    .venv/bin/python scripts/experiments/in_batch_false_negatives.py [PAIRS]

Draws the default recipe's training pairs, batches them with sentence-transformers' own no-duplicates sampler (as
`finetune` does) and counts, over every anchor, the in-batch negatives (other pairs' labels) that label the anchor's
text somewhere in the memory: what a label-aware mask in the loss would remove.
"""

from __future__ import annotations

import sys

from datasets import Dataset
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

from knnbe_qdrant._data import default_memory, load_taxonomy
from knnbe_qdrant.encoding.finetune import Recipe, training_pairs


def main() -> None:
    recipe = Recipe()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else recipe.pairs
    skills = load_taxonomy()
    memory = default_memory(skills, recipe.memory_sources)
    label = {s.id: s.label for s in skills}
    gold: dict[str, set[str]] = {}
    for m in memory:
        if m.skill_id in label:
            gold.setdefault(m.text, set()).add(label[m.skill_id])
    pairs = training_pairs(skills, memory, n, recipe.seed)
    multi = sum(len(gold[text]) > 1 for text, _ in pairs)
    dataset = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    sampler = NoDuplicatesBatchSampler(dataset, batch_size=recipe.batch_size, drop_last=False, seed=recipe.seed)
    negatives = false = anchors_hit = 0
    for batch in sampler:
        labels = [pairs[i][1] for i in batch]
        for i in batch:
            text, positive = pairs[i]
            hits = sum(other in gold[text] for other in labels if other != positive)
            negatives += len(batch) - 1
            false += hits
            anchors_hit += hits > 0
    print(f"{len(pairs)} pairs, {multi} ({100 * multi / len(pairs):.1f}%) with a text of two or more gold labels")
    print(f"in-batch negatives: {negatives}; a gold label of the anchor's text: {false} "
          f"({100 * false / negatives:.4f}%); anchors with one or more: {anchors_hit} "
          f"({100 * anchors_hit / len(pairs):.2f}%)")


if __name__ == "__main__":
    main()
