"""Commands that map text to skills: map (sentences), map-postings (whole postings, optionally on Ray)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict
from itertools import chain, islice
from pathlib import Path
from typing import Any, TextIO

from .._errors import InputFileError, InvalidInputError
from .._results import SentenceResult
from ._common import connection, open_mapper

_MAP_BATCH = 256


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    m = sub.add_parser("map", parents=[parent], help="map sentences to skills")
    m.add_argument("sentences", nargs="*", help="sentences to map (default: --file, else standard input)")
    m.add_argument("--file", "-f", metavar="FILE", help="read sentences from FILE, one per line ('-' = stdin); "
                   "blank lines are skipped")
    m.add_argument("--top", type=int, default=10, help="skills per sentence (default 10)")
    m.add_argument("--json", action="store_true", help="one JSON object per sentence, one per line")
    m.add_argument("--mode", default="knnbe", choices=["knnbe", "bi-encoder", "knn"], help="scoring (default knnbe)")
    m.add_argument("--tenant", help="also see this tenant's skills and memory")
    m.add_argument("--exact", action="store_true", help="exact search instead of HNSW")
    m.add_argument("--decompose", action=argparse.BooleanOptionalAction, help="also map each piece of a sentence "
                   "that names several skills and that the memory does not know; a skill found through a piece says "
                   "which (default: the store's: on for the shipped model, unless the store was tuned without it; "
                   "see docs/accuracy.md)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(func=map_sentences)

    mp = sub.add_parser("map-postings", parents=[parent], help="map whole postings (JSONL, CSV or Parquet) to skills")
    mp.add_argument("source", metavar="IN", help="postings: .jsonl, .csv or .parquet with an id and a text field")
    mp.add_argument("out", metavar="OUT", help="one record per posting: .jsonl (default) or .parquet")
    mp.add_argument("--id-field", default="id")
    mp.add_argument("--text-field", default="text")
    mp.add_argument("--top", type=int, default=20, help="skills per posting (default 20)")
    mp.add_argument("--sentence-top", type=int, default=10, help="skills kept per sentence (default 10)")
    mp.add_argument("--tenant")
    mp.add_argument("--decompose", action=argparse.BooleanOptionalAction, help="map each sentence's pieces too, "
                    "as `map --decompose` (default: the store's)")
    mp.add_argument("--no-progress", action="store_true")
    mp.add_argument("--ray", metavar="ADDRESS", help="run on Ray: 'local' starts a local instance, or a cluster "
                    "address ('auto', 'ray://head:10001'); needs the ray extra")
    mp.add_argument("--ray-actors", type=int, default=2, help="mapper actors on Ray (default 2)")
    mp.set_defaults(func=map_postings)


def _map_input(args: argparse.Namespace, stack: ExitStack) -> tuple[Iterator[str], str]:
    """The sentences to map, streamed (a file or standard input is read as it is mapped), and where they come
    from."""
    from .._data import iter_sentences

    if args.sentences and args.file:
        raise InvalidInputError("give sentences as arguments or with --file, not both")
    if args.sentences:
        for i, s in enumerate(args.sentences, start=1):
            if not s.strip():
                raise InvalidInputError(f"argument {i} is an empty sentence")
        return iter([s.strip() for s in args.sentences]), "the arguments"
    if args.file and args.file != "-":
        try:
            stream = stack.enter_context(open(args.file, "rb"))  # noqa: SIM115  (closed by the ExitStack)
        except OSError as exc:
            raise InputFileError(f"{args.file}: cannot read ({exc.strerror or exc})") from None
        return iter_sentences(stream, args.file), args.file
    if sys.stdin is None or (sys.stdin.isatty() and not args.file):
        raise InvalidInputError("no sentences: give them as arguments, with --file FILE, or on standard input")
    return iter_sentences(sys.stdin.buffer, "<stdin>"), "standard input"


def print_table(results: list[SentenceResult], out: TextIO) -> None:
    for r in results:
        print(f"\n{r.text}", file=out)
        print(f"  {'#':>2}  {'score':>6}  {'bi-enc':>6}  {'kNN':>6}  skill", file=out)
        for rank, s in enumerate(r.skills, start=1):
            piece = f"   (from \"{s.piece[:60]}\")" if s.piece else ""
            if s.tokens:
                piece += f"   (on \"{' … '.join(s.tokens)[:60]}\")"
            print(f"  {rank:>2}  {s.score:6.3f}  {s.bi_encoder:6.3f}  {s.knn:6.3f}  {s.label}{piece}", file=out)
            if s.evidence:
                e = max(s.evidence, key=lambda e: e.similarity)
                more = f" (+{len(s.evidence) - 1} more)" if len(s.evidence) > 1 else ""
                print(f"  {'':>26}  ↳ \"{e.text[:80]}\" {e.similarity:.2f}{more}", file=out)


def map_sentences(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise InvalidInputError("--top must be >= 1")
    with ExitStack() as stack:
        sentences, origin = _map_input(args, stack)
        first = list(islice(sentences, _MAP_BATCH))  # read before the model loads: no input, no wait
        if not first:
            raise InvalidInputError(f"no sentences in {origin} (blank lines are skipped)")
        return _map_stream(args, chain([first], iter(lambda: list(islice(sentences, _MAP_BATCH)), [])))


def _map_stream(args: argparse.Namespace, batches: Iterator[list[str]]) -> int:
    with open_mapper(args, exact=args.exact) as mapper:
        from tqdm.auto import tqdm

        with tqdm(unit="sent", disable=args.no_progress, file=sys.stderr, delay=2.0) as bar:
            for batch in batches:
                results = mapper.map(batch, top=args.top, mode=args.mode, tenant=args.tenant,
                                     decompose=args.decompose)
                if args.json:
                    for r in results:
                        print(json.dumps(r.to_dict(), ensure_ascii=False))
                else:
                    print_table(results, sys.stdout)
                sys.stdout.flush()
                bar.update(len(results))
    return 0


def map_postings(args: argparse.Namespace) -> int:
    from ..postings import LocalRunner, PostingSettings, Runner
    from ..postings import map_postings as run

    settings = PostingSettings(args.top, args.sentence_top, args.tenant, args.decompose)
    runner: Runner
    if args.ray:
        from ..postings.ray import RayRunner

        runner = RayRunner(args.ray, args.ray_actors, connection(args), settings)
        mapper = None
    else:
        mapper = open_mapper(args)
        runner = LocalRunner(mapper, settings)
    try:
        record = {"source": str(Path(args.source).resolve()), "id_field": args.id_field,
                  "text_field": args.text_field, **asdict(settings), "store": connection(args).describe()}
        report = run(
            runner, args.source, args.out, id_field=args.id_field, text_field=args.text_field,
            progress=not args.no_progress, run=record,
            on_malformed=lambda message: print(f"skipped: {message}", file=sys.stderr),
        )
    finally:
        runner.close()
        if mapper is not None:
            mapper.close()
    print(f"wrote {report.written} postings ({report.sentences} sentences) to {args.out}; "
          f"{report.skipped_already_done} already there; {len(report.malformed)} malformed skipped")
    return 0
