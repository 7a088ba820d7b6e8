"""Commands that measure: eval (accuracy on benchmark files), tune (λ, k, τ on validation files), unseen (unseen
skills without retraining), bench (throughput and Qdrant overhead)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .._errors import InvalidInputError
from ._common import connection, open_mapper


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    ev = sub.add_parser("eval", parents=[parent], help="RP@5, RP@10 and MRR on a benchmark file")
    ev.add_argument("files", nargs="+", metavar="FILE", help="benchmark JSONL ({sentence, labels, uris}) or span CSV "
                    "(sentence,span,sub_span,label), or skillskape-dev (the shipped SkillSkape dev split)")
    ev.add_argument("--mode", default="knnbe", choices=["knnbe", "bi-encoder", "knn", "all"],
                    help="scoring to evaluate; 'all' compares the three on the same encodings (default knnbe)")
    ev.add_argument("--depth", type=int, default=100, help="ranking depth for MRR (default 100)")
    ev.add_argument("--exact", action="store_true", help="exact search instead of HNSW")
    ev.add_argument("--json", action="store_true", help="one JSON object per file (per mode with --mode all)")
    ev.add_argument("--memory-sources", metavar="LIST", help="vote only with memory of these comma-separated sources "
                    "(to measure what each adds; default all)")
    ev.add_argument("--decompose", action=argparse.BooleanOptionalAction, help="evaluate with or without query "
                    "decomposition (default: as the store maps, which for the shipped model is with it)")
    ev.add_argument("--compare-decompose", action="store_true", help="compare kNNBE with and without query "
                    "decomposition: both scores and the paired bootstrap interval of the gain")
    ev.set_defaults(func=evaluate)

    tu = sub.add_parser("tune", parents=[parent], help="choose lam, k, tau on validation files; save them as the "
                        "store's defaults")
    tu.add_argument("files", nargs="+", metavar="FILE", help="validation files (never a test split)")
    tu.add_argument("--check", action="append", default=[], metavar="FILE",
                    help="also report this file at every point, outside the objective (e.g. skillskape-dev)")
    tu.add_argument("--dry-run", action="store_true", help="show the best settings, save nothing")
    tu.add_argument("--package-defaults", action="store_true",
                    help="save them as the shipped defaults for this model (maintainers), not in the store")
    tu.add_argument("--show", type=int, default=10, help="grid points to print (default 10)")
    tu.add_argument("--exact", action="store_true", help="exact search instead of HNSW")
    tu.add_argument("--decompose", action=argparse.BooleanOptionalAction, help="tune for query decomposition (the "
                    "merge weight and protected places too; the gate stays at its default; minutes rather than "
                    "seconds) or without it; the store then maps so by default (default: as the store maps now)")
    tu.add_argument("--token-weights", metavar="LIST", help="comma-separated token-matching weights (alpha) to "
                    "search, at the mapper's T and gate (default: those the mapper maps with, and 0; all of 0, 0.25, "
                    "0.5, 0.75, 1 for a model trained with the token score)")
    tu.set_defaults(func=tune)

    un = sub.add_parser("unseen", parents=[parent], help="unseen skills without retraining: remove some skills' "
                        "memory, evaluate on their sentences, put it back, evaluate again")
    un.add_argument("files", nargs="+", metavar="FILE", help="benchmark files, as for eval")
    un.add_argument("--fraction", type=float, default=0.5, help="share of the files' gold skills to take out "
                    "(default 0.5)")
    un.add_argument("--seed", type=int, default=0)
    un.add_argument("--backup", default="unseen-skills-backup.jsonl", metavar="FILE",
                    help="where the removed memory is written first (deleted once it is back)")
    un.add_argument("--exact", action="store_true", help="exact search instead of HNSW")
    un.add_argument("--json", action="store_true")
    un.set_defaults(func=unseen)

    be = sub.add_parser("bench", parents=[parent], help="measure throughput and Qdrant overhead; prints a table")
    be.add_argument("--sentences", type=int, default=512, help="how many SkillSkape dev sentences (default 512)")
    be.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default 3)")
    be.add_argument("--batch-size", type=int, default=256, help="sentences per map call (default 256, as `map`)")
    be.add_argument("--json", action="store_true", help="print one JSON object")
    be.set_defaults(func=bench)


def evaluate(args: argparse.Namespace) -> int:
    from .._mapper import MODES
    from ..evaluation.evaluate import format_report, run_eval, to_json

    modes = MODES if args.mode == "all" else (args.mode,)
    sources = [s.strip() for s in args.memory_sources.split(",")] if args.memory_sources else None
    with open_mapper(args, exact=args.exact, memory_sources=sources, decompose=args.decompose) as mapper:
        if args.compare_decompose:
            from ..evaluation.evaluate import compare_decomposition

            for path in args.files:
                r = compare_decomposition(mapper, path, depth=args.depth)
                if args.json:
                    print(json.dumps(r), flush=True)
                    continue
                print(f"{path} (n {r['n']})  plain -> decomposed, gain [95% paired bootstrap interval]")
                for metric, (gain, lo, hi) in r["gain"].items():
                    print(f"  {metric:<6} {100 * r['plain'][metric]:5.1f} -> {100 * r['decomposed'][metric]:5.1f}  "
                          f"{100 * gain:+5.1f} [{100 * lo:+5.1f}, {100 * hi:+5.1f}]", flush=True)
            return 0
        if sources:
            from .. import _schema as S

            stored = mapper.store.distinct(S.MEMORY, S.F_SOURCE)
            unknown = sorted(set(sources) - set(stored))
            if unknown:
                raise InvalidInputError(f"--memory-sources: the store's memory has no source {unknown}; it has "
                                        f"{', '.join(sorted(stored))}")
        for path in args.files:
            report = run_eval(mapper, path, modes, depth=args.depth)
            print(to_json(report) if args.json else format_report(path, report), flush=True)
    return 0


def tune(args: argparse.Namespace) -> int:
    from ..evaluation.tuning import save_package_defaults, save_params
    from ..evaluation.tuning import tune as run

    with open_mapper(args, exact=args.exact, decompose=args.decompose) as mapper:
        default, merge = mapper.params, mapper.merge_params
        decompose = mapper.decompose  # as asked, else as the store maps
        grid = None
        if args.token_weights:
            try:
                weights = tuple(float(w) for w in args.token_weights.split(","))
            except ValueError:
                raise InvalidInputError(f"--token-weights: not a comma-separated list of numbers: "
                                        f"{args.token_weights!r}") from None
            bad = [w for w in weights if not 0.0 <= w <= 1.0]
            if bad:
                raise InvalidInputError(f"--token-weights: each weight must be in [0, 1], got {bad}")
            grid = {"token_weight": weights, "token_temperature": (default.token_temperature,),
                    "token_gate": (default.token_gate,)}
        rows = run(mapper, args.files, checks=args.check, decompose=decompose, grid=grid)
        names = [str(f) for f in [*args.files, *args.check]]
        extra = f" {'wt':>4} {'prot':>4}" if decompose else ""
        extra += f" {'tok':>4}"
        print(f"{'lam':>4} {'k':>4} {'tau':>5} {'agg':<8}{extra} "
              + "  ".join(f"{Path(n).name[:22]:>22}" for n in names) + "  objective")
        print(f"{'':>{24 + len(extra)}}" + "  ".join(f"{'RP@5 / RP@10 / MRR':>22}" for _ in names))

        def setting(r: dict[str, Any]) -> str:
            merged = f" {r['weight']:>4} {r['protect']:>4}" if decompose else ""
            merged += f" {r['token_weight']:>4}"
            return f"{r['lam']:>4} {r['k']:>4} {r['tau']:>5} {r['aggregation']:<8}{merged}"

        def describe(r: dict[str, Any]) -> str:
            merged = f", weight {r['weight']}, protect {r['protect']}, gate {r['gate']}" if decompose else ""
            tokens = (f", token weight {r['token_weight']} (T {r['token_temperature']})" if r["token_weight"]
                      else "")
            return f"lam {r['lam']}, k {r['k']}, tau {r['tau']}, {r['aggregation']}{tokens}{merged}"

        for r in rows[: args.show]:
            cells = "  ".join(f"{100 * r[n]['rp@5']:6.1f} /{100 * r[n]['rp@10']:5.1f} /{100 * r[n]['mrr']:5.1f}"
                              for n in names)
            print(f"{setting(r)} {cells}  {100 * r['objective']:.1f}")
        best = rows[0]
        current = {"lam": default.lam, "k": default.k, "tau": default.tau, "aggregation": default.aggregation,
                   "token_weight": default.token_weight,
                   **({"weight": merge.weight, "protect": merge.protect, "gate": merge.gate} if decompose else {})}
        before = next((r for r in rows if all(r[k] == v for k, v in current.items())), None)
        if before is not None:
            print(f"current defaults ({describe(before)}): objective {100 * before['objective']:.1f}")
        chosen = describe(best) + (" with decomposition" if decompose else "")
        if args.package_defaults and not args.dry_run:
            path = save_package_defaults(mapper, best, args.files)
            print(f"saved {chosen} for {mapper.encoder.name} in {path}")
        elif not args.dry_run:
            save_params(mapper, best, args.files)
            print(f"saved {chosen} as the defaults of {mapper.store.describe()}")
    return 0


def unseen(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import format_report
    from ..evaluation.unseen import unseen_skills

    with open_mapper(args, exact=args.exact) as mapper:
        r = unseen_skills(mapper, args.files, fraction=args.fraction, seed=args.seed, backup=args.backup)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['skills']} skills, {r['memory_points']} memory points taken out; {r['sentences']} sentences name "
          "one of those skills")
    print(format_report("memory of those skills removed", r["before"]))
    print(format_report("the same points upserted back (nothing re-encoded, no retraining)", r["after"]))
    return 0


def bench(args: argparse.Namespace) -> int:
    from ..evaluation.bench import format_table, run_bench

    report = run_bench(connection(args), n_sentences=args.sentences, repeats=args.repeats, batch_size=args.batch_size)
    print(json.dumps(report) if args.json else format_table(report))
    return 0
