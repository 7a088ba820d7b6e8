"""Contrastive fine-tuning of the encoder on labelled sentences: (sentence, skill label) pairs, in-batch negatives
(MultipleNegativesRankingLoss), sentence-transformers' own trainer. The output is an ordinary sentence-transformers
model directory; build a store with it (`build --model DIR`) and the mapper uses it like any other model.

Needs the `train` extra (datasets, accelerate), which sentence-transformers' trainer imports.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .._data import TRAINING_SOURCES, LabelledSentence, Skill, default_memory, load_taxonomy
from .._errors import InvalidInputError, ModelError
from .models import BASE_MODEL, canonical_model_name, hub_reachable, local_model_dir
from .patch import make_patch, patches_dir

RECIPE_FILE = "knnbe_finetune.json"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the fine-tuned weights; written next to them so a run can be repeated."""

    base: str = BASE_MODEL
    memory_sources: tuple[str, ...] = TRAINING_SOURCES
    pairs: int = 40_000
    epochs: float = 1.0
    batch_size: int = 64
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    max_seq_length: int = 64
    # The word-embedding matrix is half of MiniLM's weights; leaving it as it is keeps the change small enough to
    # ship (only the transformer layers differ from the base model) and costs little: the vocabulary is not new.
    freeze_word_embeddings: bool = True
    hard_negatives: bool = False
    """Give each pair one mined negative label as well: a skill the base model ranks near the top for the sentence
    (ranks HARD_NEGATIVE_RANKS) that labels none of the memory sentences with this text."""
    token_attention: bool = False
    """Train with the token-attention score (encoding.token_loss) beside the pooled one: the model a store uses
    with token-level matching."""
    token_temperature: float = 1.0
    """T of the token-attention softmax, in units of <token state, unit skill vector>; the product scores with the
    same T (it is saved with the model)."""
    seed: int = 0


def training_pairs(skills: Sequence[Skill], memory: Sequence[LabelledSentence], n: int, seed: int
                   ) -> list[tuple[str, str]]:
    """(sentence, skill label) pairs: a seeded sample of `n` labelled sentences, or all of them if fewer."""
    labels = {s.id: s.label for s in skills}
    pairs = sorted(
        {(m.text, labels[m.skill_id]) for m in memory if m.skill_id in labels and m.text != labels[m.skill_id]}
    )
    if not pairs:
        raise InvalidInputError("no training pairs: no labelled sentence names a skill of the taxonomy")
    rng = random.Random(seed)
    return rng.sample(pairs, min(n, len(pairs)))


HARD_NEGATIVE_RANKS = (3, 30)
"""Where mined negatives come from in the base model's ranking of the skills for a sentence: below the first few
(often unlabelled synonyms of a gold skill, i.e. false negatives), within the few dozen the model confuses."""


def mine_hard_negatives(pairs: Sequence[tuple[str, str]], skills: Sequence[Skill],
                        memory: Sequence[LabelledSentence], model: str, seed: int) -> list[str]:
    """One negative label per pair, from the base model's own ranking of every skill label for the pair's text;
    no label of a skill that labels this text anywhere in the memory (a multi-skill sentence has several
    positives, and none of them may come back as its negative)."""
    import numpy as np

    from .encoder import Encoder

    label_of = {s.id: s.label for s in skills}
    positives: dict[str, set[str]] = {}
    for m in memory:
        if m.skill_id in label_of:
            positives.setdefault(m.text, set()).add(label_of[m.skill_id])
    labels = sorted(set(label_of.values()))
    encoder = Encoder(model, precision="fp32")
    label_vectors = encoder.encode(labels)
    texts = [t for t, _ in pairs]
    rng = random.Random(seed)
    low, high = HARD_NEGATIVE_RANKS
    out: list[str] = []
    for start in range(0, len(texts), 2048):
        sims = encoder.encode(texts[start : start + 2048]) @ label_vectors.T
        top = np.argpartition(-sims, high, axis=1)[:, :high]
        for row, (text, positive) in enumerate(pairs[start : start + 2048]):
            ranked = top[row][np.argsort(-sims[row, top[row]])]
            gold = positives.get(text, set()) | {positive}
            pool = [labels[i] for i in ranked[low:high] if labels[i] not in gold]
            out.append(rng.choice(pool) if pool else labels[rng.randrange(len(labels))])
    return out


def finetune(out_dir: str | Path, recipe: Recipe = Recipe(), *, extra: Sequence[LabelledSentence] = (),
             progress: bool = True) -> Path:
    """Train per `recipe` and save a sentence-transformers model directory at `out_dir` (with the recipe in it)."""
    try:
        import torch
        from datasets import Dataset
        from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
        from sentence_transformers import SentenceTransformerTrainingArguments as TrainingArguments

        try:  # sentence-transformers 6 moved these; the old paths still work there, with a DeprecationWarning
            from sentence_transformers.sentence_transformer import losses
            from sentence_transformers.sentence_transformer.training_args import BatchSamplers
        except ImportError:
            from sentence_transformers import losses
            from sentence_transformers.training_args import BatchSamplers
    except ImportError as exc:
        raise ModelError(f"fine-tuning needs the 'train' extra: pip install 'knnbe-qdrant[train]' ({exc})") from None

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InvalidInputError(f"{out} exists and is not empty; name a new directory for the fine-tuned model")
    name = canonical_model_name(recipe.base)
    base_dir = local_model_dir(name)
    if base_dir is None and not hub_reachable():  # offline, the hub's client would retry each file for ~20 s
        raise ModelError(f"base model {name!r} is not on this machine and the Hugging Face hub cannot be reached; "
                         "name a model directory, or a model this machine has")
    started = time.perf_counter()
    skills = load_taxonomy()
    memory = default_memory(skills, recipe.memory_sources) + list(extra)
    pairs = training_pairs(skills, memory, recipe.pairs, recipe.seed)

    torch.manual_seed(recipe.seed)
    model = SentenceTransformer(str(base_dir or name), device=None)
    served_length = model.max_seq_length
    model.max_seq_length = recipe.max_seq_length  # job-ad sentences are short; truncating long ones saves time
    if recipe.freeze_word_embeddings:
        model[0].auto_model.get_input_embeddings().weight.requires_grad_(False)

    columns = {"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]}
    if recipe.hard_negatives:
        columns["negative"] = mine_hard_negatives(pairs, skills, memory, name, recipe.seed)
    dataset = Dataset.from_dict(columns)
    # Nothing is checkpointed (save_strategy "no"); the trainer still wants a folder, which goes when it is done.
    work = tempfile.TemporaryDirectory(prefix="knnbe-finetune-")
    args = TrainingArguments(
        output_dir=work.name,
        num_train_epochs=recipe.epochs,
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        warmup_steps=recipe.warmup_ratio,  # a float below 1 is a fraction of the steps (transformers v5)
        dataloader_pin_memory=False,
        # Two sentences of one skill in a batch would each be the other's false negative.
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        seed=recipe.seed,
        save_strategy="no",
        logging_steps=25,
        report_to="none",
        disable_tqdm=not progress,
    )
    if recipe.token_attention:
        from .token_loss import TokenAttentionLoss

        loss = TokenAttentionLoss(model, recipe.token_temperature)
    else:
        loss = losses.MultipleNegativesRankingLoss(model)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    with work:
        result = trainer.train()
    model.max_seq_length = served_length
    model.save(str(out))
    record = {
        **asdict(recipe),
        "base": name,
        "pairs_used": len(pairs),
        "extra_sentences": len(extra),
        "train_loss": round(float(result.training_loss), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out


def ship(tuned_dir: str | Path, name: str) -> Path:
    """Make the patch of a model fine-tuned from a bundled base and put it in the package, under `name`."""
    recipe_file = Path(tuned_dir) / RECIPE_FILE
    recipe = json.loads(recipe_file.read_text()) if recipe_file.exists() else {}
    base = canonical_model_name(recipe.get("base"))
    base_dir = local_model_dir(base)
    if base_dir is None:
        raise ModelError(f"the base model {base} of {tuned_dir} is not on this machine")
    return make_patch(tuned_dir, base_dir, patches_dir() / name.rsplit("/", 1)[-1], name, {**recipe, "base": base})
