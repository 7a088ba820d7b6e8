"""The `knnbe-qdrant` command: a thin shell over the library (parse, call, print)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from ._errors import InvalidInputError, KnnbeError


def _store_args(p: argparse.ArgumentParser, default: object = None) -> None:
    g = p.add_argument_group("where the store is (before or after the command)")
    g.add_argument("--store", metavar="PATH", default=default, help="embedded store directory (env KNNBE_STORE; "
                   "default ~/.local/share/knnbe-qdrant/store)")
    g.add_argument("--url", default=default, help="Qdrant server URL instead of the embedded store (env QDRANT_URL)")
    g.add_argument("--api-key", default=default, help="Qdrant API key (env QDRANT_API_KEY)")
    g.add_argument("--prefix", default=default,
                   help="collection name prefix on a server (env KNNBE_PREFIX; default knnbe_)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="knnbe-qdrant", description="Map job-posting text to ESCO skills with kNNBE on Qdrant."
    )
    parser.add_argument("--version", action="version", version=f"knnbe-qdrant {__version__}")
    _store_args(parser)
    # Also accepted after the command; SUPPRESS keeps a value given before it from being reset to None.
    common = argparse.ArgumentParser(add_help=False)
    _store_args(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", parents=[common], help="build (or finish building) the store from ESCO and the memory")
    b.add_argument("--model", help="sentence-transformers model name or path (default: the bundled all-MiniLM-L6-v2)")
    b.add_argument("--taxonomy", metavar="FILE", help="JSONL of skills (id, label, alt_labels, description) "
                   "instead of the shipped ESCO v1.1.0")
    b.add_argument("--memory-sources", default=None, metavar="LIST",
                   help="comma-separated shipped memory sources (default: all of them)")
    b.add_argument("--skill-text", default="label", choices=["label", "label_description"],
                   help="what text embeds each skill (default: label)")
    b.add_argument("--force", action="store_true", help="delete the existing store first and rebuild from scratch")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")

    m = sub.add_parser("map", parents=[common], help="map sentences to skills")
    m.add_argument("sentences", nargs="*", help="sentences to map (default: --file, else standard input)")
    m.add_argument("--file", "-f", metavar="FILE", help="read sentences from FILE, one per line ('-' = stdin); "
                   "blank lines are skipped")
    m.add_argument("--top", type=int, default=10, help="skills per sentence (default 10)")
    m.add_argument("--json", action="store_true", help="one JSON object per sentence, one per line")
    m.add_argument("--mode", default="knnbe", choices=["knnbe", "bi-encoder", "knn"], help="scoring (default knnbe)")
    m.add_argument("--tenant", help="also see this tenant's skills and memory")
    m.add_argument("--exact", action="store_true", help="exact search instead of HNSW")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = sub.add_parser("eval", parents=[common], help="RP@5, RP@10 and MRR on a benchmark file")
    ev.add_argument("files", nargs="+", metavar="FILE", help="benchmark JSONL ({sentence, labels, uris}) or span CSV "
                    "(sentence,span,sub_span,label)")
    ev.add_argument("--mode", default="knnbe", choices=["knnbe", "bi-encoder", "knn", "all"],
                    help="scoring to evaluate; 'all' compares the three on the same encodings (default knnbe)")
    ev.add_argument("--depth", type=int, default=100, help="ranking depth for MRR (default 100)")
    ev.add_argument("--exact", action="store_true", help="exact search instead of HNSW")
    ev.add_argument("--json", action="store_true", help="one JSON object per file (per mode with --mode all)")

    be = sub.add_parser("bench", parents=[common], help="measure throughput and Qdrant overhead; prints a table")
    be.add_argument("--sentences", type=int, default=512, help="how many SkillSkape dev sentences (default 512)")
    be.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default 3)")
    be.add_argument("--batch-size", type=int, default=256, help="sentences per map call (default 256, as `map`)")
    be.add_argument("--json", action="store_true", help="print one JSON object")

    return parser


def _open_kwargs(args: argparse.Namespace) -> dict:
    return dict(url=args.url, api_key=args.api_key, prefix=args.prefix)


def _cmd_build(args: argparse.Namespace) -> int:
    from ._build import build_store
    from ._config import open_store
    from ._data import DEFAULT_MEMORY_SOURCES, load_taxonomy
    from ._encoder import Encoder

    sources = tuple(args.memory_sources.split(",")) if args.memory_sources else DEFAULT_MEMORY_SOURCES
    unknown = set(sources) - set(DEFAULT_MEMORY_SOURCES)
    if unknown:
        raise InvalidInputError(f"unknown memory sources {sorted(unknown)}; known: {', '.join(DEFAULT_MEMORY_SOURCES)}")
    skills = load_taxonomy(args.taxonomy)  # read before anything is touched: a bad file changes nothing
    store = open_store(args.store, create=True, **_open_kwargs(args))
    with store:
        if args.force:
            store.drop()
        progress = not args.no_progress
        if progress:
            print(f"building {store.describe()} ({len(skills)} skills) ...", file=sys.stderr, flush=True)
        encoder = Encoder(args.model)
        manifest = build_store(store, encoder, skills=skills, memory_sources=sources, skill_text=args.skill_text,
                               progress=progress)
    print(f"store ready: {store.describe()}, model {manifest.model} ({manifest.dimension}-d), "
          f"{manifest.counts.get('skills', 0)} skills, {manifest.counts.get('memory', 0)} memory sentences, "
          f"built in {manifest.build_seconds} s")
    return 0


def _read_map_input(args: argparse.Namespace) -> list[str]:
    from ._data import read_sentences, sentences_from_bytes

    if args.sentences and args.file:
        raise InvalidInputError("give sentences as arguments or with --file, not both")
    if args.sentences:
        for i, s in enumerate(args.sentences, start=1):
            if not s.strip():
                raise InvalidInputError(f"argument {i} is an empty sentence")
        return [s.strip() for s in args.sentences]
    if args.file and args.file != "-":
        sentences = read_sentences(args.file)
        origin = args.file
    else:
        if sys.stdin is None or (sys.stdin.isatty() and not args.file):
            raise InvalidInputError("no sentences: give them as arguments, with --file FILE, or on standard input")
        sentences = sentences_from_bytes(sys.stdin.buffer.read(), "<stdin>")
        origin = "standard input"
    if not sentences:
        raise InvalidInputError(f"no sentences in {origin} (blank lines are skipped)")
    return sentences


def _print_table(results, out) -> None:
    for r in results:
        print(f"\n{r.text}", file=out)
        print(f"  {'#':>2}  {'score':>6}  {'bi-enc':>6}  {'kNN':>6}  skill", file=out)
        for rank, s in enumerate(r.skills, start=1):
            print(f"  {rank:>2}  {s.score:6.3f}  {s.bi_encoder:6.3f}  {s.knn:6.3f}  {s.label}", file=out)
            if s.evidence:
                e = max(s.evidence, key=lambda e: e.similarity)
                more = f" (+{len(s.evidence) - 1} more)" if len(s.evidence) > 1 else ""
                print(f"  {'':>26}  ↳ \"{e.text[:80]}\" {e.similarity:.2f}{more}", file=out)


def _cmd_map(args: argparse.Namespace) -> int:
    from ._mapper import SkillMapper

    sentences = _read_map_input(args)
    with SkillMapper.open(args.store, exact=args.exact, **_open_kwargs(args)) as mapper:
        from tqdm.auto import tqdm

        batch = 256
        show = not args.no_progress and len(sentences) > batch
        with tqdm(total=len(sentences), unit="sent", disable=not show, file=sys.stderr) as bar:
            for start in range(0, len(sentences), batch):
                results = mapper.map(sentences[start : start + batch], top=args.top, mode=args.mode,
                                     tenant=args.tenant)
                if args.json:
                    for r in results:
                        print(json.dumps(r.to_dict(), ensure_ascii=False))
                else:
                    _print_table(results, sys.stdout)
                sys.stdout.flush()
                bar.update(len(results))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ._bench import format_table, run_bench

    report = run_bench(
        args.store, n_sentences=args.sentences, repeats=args.repeats, batch_size=args.batch_size,
        **_open_kwargs(args),
    )
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ._evaluate import format_report, run_eval, to_json
    from ._mapper import MODES, SkillMapper

    modes = MODES if args.mode == "all" else (args.mode,)
    with SkillMapper.open(args.store, exact=args.exact, **_open_kwargs(args)) as mapper:
        for path in args.files:
            report = run_eval(mapper, path, modes, depth=args.depth)
            print(to_json(report) if args.json else format_report(path, report), flush=True)
    return 0


COMMANDS = {"build": _cmd_build, "map": _cmd_map, "eval": _cmd_eval, "bench": _cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "map" and args.top < 1:
        print("error: --top must be >= 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        return COMMANDS[args.command](args)
    except KnnbeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidInputError) else 1
    except KeyboardInterrupt:
        print(f"interrupted after {time.perf_counter() - started:.0f} s", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
