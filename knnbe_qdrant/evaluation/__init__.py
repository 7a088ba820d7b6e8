"""Measuring the mapper: benchmark files and gold labels (`benchmarks`), ranking metrics (`metrics`), `eval`
(`evaluate`), choosing λ, k, τ on validation files (`tuning`), unseen skills (`unseen`) and throughput (`bench`).

Nothing in the product depends on this package; it depends on the product (the mapper and the store)."""

from .benchmarks import SHIPPED, SKILLSKAPE_DEV, GoldSentence, read_benchmark, resolve_gold
from .evaluate import DEFAULT_DEPTH, eval_items, format_report, run_eval
from .metrics import evaluate, reciprocal_rank, rp_at_k

__all__ = [
    "DEFAULT_DEPTH",
    "SHIPPED",
    "SKILLSKAPE_DEV",
    "GoldSentence",
    "eval_items",
    "evaluate",
    "format_report",
    "read_benchmark",
    "reciprocal_rank",
    "resolve_gold",
    "rp_at_k",
    "run_eval",
]
