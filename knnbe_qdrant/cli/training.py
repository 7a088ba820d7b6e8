"""The command that trains: finetune (the encoder, on the memory's labelled sentences; needs the train extra)."""

from __future__ import annotations

import argparse
from typing import Any

from .._data import TRAINING_SOURCES
from .._errors import InvalidInputError
from ._common import shipped_sources


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    ft = sub.add_parser("finetune", help="fine-tune the encoder on the memory's labelled sentences (needs the "
                        "train extra); writes a sentence-transformers model directory")
    ft.add_argument("out", metavar="DIR", help="new directory for the fine-tuned model")
    ft.add_argument("--base", default=None, help="model to start from (default: the bundled all-MiniLM-L6-v2)")
    ft.add_argument("--memory-sources", default=None, metavar="LIST",
                    help="comma-separated shipped sources to draw pairs from (default: those the shipped "
                         f"encoder was trained on: {','.join(TRAINING_SOURCES)})")
    ft.add_argument("--pairs", type=int, default=40_000, help="(sentence, skill label) pairs sampled (default 40000)")
    ft.add_argument("--epochs", type=float, default=1.0)
    ft.add_argument("--batch-size", type=int, default=64, help="in-batch negatives per pair = batch size - 1")
    ft.add_argument("--learning-rate", type=float, default=2e-5)
    ft.add_argument("--hard-negatives", action="store_true",
                    help="add one mined negative label per pair (ranked 3-30 by the base model, not a label of the "
                         "sentence)")
    ft.add_argument("--token-attention", action="store_true",
                    help="train with the token-attention score beside the pooled one (token-level matching)")
    ft.add_argument("--token-temperature", type=float, default=1.0, metavar="T",
                    help="temperature of the token-attention softmax (default 1.0)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--no-progress", action="store_true")
    ft.set_defaults(func=finetune)


def finetune(args: argparse.Namespace) -> int:
    from ..encoding import BASE_MODEL
    from ..encoding.finetune import Recipe
    from ..encoding.finetune import finetune as run

    if args.pairs < args.batch_size:
        raise InvalidInputError(f"--pairs ({args.pairs}) must be at least --batch-size ({args.batch_size})")
    if not args.token_temperature > 0:
        raise InvalidInputError(f"--token-temperature must be > 0, got {args.token_temperature}")
    sources = shipped_sources(args.memory_sources, TRAINING_SOURCES)
    recipe = Recipe(base=args.base or BASE_MODEL, memory_sources=sources, pairs=args.pairs, epochs=args.epochs,
                    batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
                    hard_negatives=args.hard_negatives, token_attention=args.token_attention,
                    token_temperature=args.token_temperature)
    out = run(args.out, recipe, progress=not args.no_progress)
    print(f"fine-tuned model saved in {out}; build a store with it: knnbe-qdrant --store DIR build --model {out}")
    return 0
