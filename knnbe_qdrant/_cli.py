"""The `knnbe-qdrant` command: a thin shell over the library (parse, call, print)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ._errors import InvalidInputError, KnnbeError


def _store_args(p: argparse.ArgumentParser, default: object = None) -> None:
    g = p.add_argument_group("where the store is (before or after the command)")
    g.add_argument("--store", metavar="PATH", default=default, help="embedded store directory (env KNNBE_STORE; "
                   "default ~/.local/share/knnbe-qdrant/store)")
    g.add_argument("--url", default=default, help="Qdrant server URL instead of the embedded store (env QDRANT_URL)")
    g.add_argument("--api-key", default=default, help="Qdrant API key (env QDRANT_API_KEY)")
    g.add_argument("--prefix", default=default,
                   help="collection name prefix on a server (env KNNBE_PREFIX; default knnbe_)")
    g.add_argument("--timeout", type=int, default=default, help="server request timeout, seconds (env QDRANT_TIMEOUT)")
    g.add_argument("--grpc", action="store_true", default=default if default is not None else False,
                   help="prefer gRPC to REST on a server (env QDRANT_PREFER_GRPC)")


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
    b.add_argument("--model", help="sentence-transformers model name or path (default: the shipped fine-tuned "
                   "knnbe-qdrant/all-MiniLM-L6-v2-esco; sentence-transformers/all-MiniLM-L6-v2 is the plain one)")
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

    mp = sub.add_parser("map-postings", parents=[common], help="map whole postings (JSONL, CSV or Parquet) to skills")
    mp.add_argument("source", metavar="IN", help="postings: .jsonl, .csv or .parquet with an id and a text field")
    mp.add_argument("out", metavar="OUT", help="one record per posting: .jsonl (default) or .parquet")
    mp.add_argument("--id-field", default="id")
    mp.add_argument("--text-field", default="text")
    mp.add_argument("--top", type=int, default=20, help="skills per posting (default 20)")
    mp.add_argument("--sentence-top", type=int, default=10, help="skills kept per sentence (default 10)")
    mp.add_argument("--tenant")
    mp.add_argument("--no-progress", action="store_true")
    mp.add_argument("--ray", metavar="ADDRESS", help="run on Ray: 'local' starts a local instance, or a cluster "
                    "address ('auto', 'ray://head:10001'); needs the ray extra")
    mp.add_argument("--ray-actors", type=int, default=2, help="mapper actors on Ray (default 2)")

    ev = sub.add_parser("eval", parents=[common], help="RP@5, RP@10 and MRR on a benchmark file")
    ev.add_argument("files", nargs="+", metavar="FILE", help="benchmark JSONL ({sentence, labels, uris}) or span CSV "
                    "(sentence,span,sub_span,label), or skillskape-dev (the shipped SkillSkape dev split)")
    ev.add_argument("--mode", default="knnbe", choices=["knnbe", "bi-encoder", "knn", "all"],
                    help="scoring to evaluate; 'all' compares the three on the same encodings (default knnbe)")
    ev.add_argument("--depth", type=int, default=100, help="ranking depth for MRR (default 100)")
    ev.add_argument("--exact", action="store_true", help="exact search instead of HNSW")
    ev.add_argument("--json", action="store_true", help="one JSON object per file (per mode with --mode all)")
    ev.add_argument("--memory-sources", metavar="LIST", help="vote only with memory of these comma-separated sources "
                    "(to measure what each adds; default all)")

    ft = sub.add_parser("finetune", help="fine-tune the encoder on the memory's labelled sentences (needs the "
                        "train extra); writes a sentence-transformers model directory")
    ft.add_argument("out", metavar="DIR", help="new directory for the fine-tuned model")
    ft.add_argument("--base", default=None, help="model to start from (default: the bundled all-MiniLM-L6-v2)")
    ft.add_argument("--memory-sources", default=None, metavar="LIST",
                    help="comma-separated shipped sources to draw pairs from (default: all of them)")
    ft.add_argument("--pairs", type=int, default=40_000, help="(sentence, skill label) pairs sampled (default 40000)")
    ft.add_argument("--epochs", type=float, default=1.0)
    ft.add_argument("--batch-size", type=int, default=64, help="in-batch negatives per pair = batch size - 1")
    ft.add_argument("--learning-rate", type=float, default=2e-5)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--no-progress", action="store_true")

    un = sub.add_parser("unseen", parents=[common], help="unseen skills without retraining: remove some skills' "
                        "memory, evaluate on their sentences, put it back, evaluate again")
    un.add_argument("files", nargs="+", metavar="FILE", help="benchmark files, as for eval")
    un.add_argument("--fraction", type=float, default=0.5, help="share of the files' gold skills to take out "
                    "(default 0.5)")
    un.add_argument("--seed", type=int, default=0)
    un.add_argument("--backup", default="unseen-skills-backup.jsonl", metavar="FILE",
                    help="where the removed memory is written first (deleted once it is back)")
    un.add_argument("--exact", action="store_true", help="exact search instead of HNSW")
    un.add_argument("--json", action="store_true")

    mem = sub.add_parser("memory", help="curate the memory: add, remove, relabel, list, import, export")
    msub = mem.add_subparsers(dest="action", required=True)
    tenant_help = "the tenant whose layer is edited (default: the global layer)"

    def curation(parser_, name, help_):
        p = parser_.add_parser(name, parents=[common], help=help_)
        p.add_argument("--tenant", help=tenant_help)
        p.add_argument("--user", help="who makes the change, for provenance (env KNNBE_USER; default: login name)")
        return p

    p = curation(msub, "add", "add a labelled sentence")
    p.add_argument("--skill", required=True, help="skill id or exact preferred label")
    p.add_argument("--text", required=True)
    p.add_argument("--source", default="curator")
    p = curation(msub, "remove", "remove a sentence (a tenant hides a global one for itself)")
    p.add_argument("--skill", required=True)
    p.add_argument("--text", required=True)
    p = curation(msub, "relabel", "move a sentence to another skill (no re-encoding)")
    p.add_argument("--skill", required=True, help="its skill now")
    p.add_argument("--text", required=True)
    p.add_argument("--to", required=True, help="its new skill")
    p = curation(msub, "list", "the sentences of a skill, with provenance")
    p.add_argument("--skill", help="skill id or exact preferred label (default: all; can be long)")
    p.add_argument("--own", action="store_true", help="only the tenant's own sentences")
    p.add_argument("--json", action="store_true")
    p = curation(msub, "import", "add the labelled sentences of a JSONL or CSV file (text, skill[, source]), or of "
                 "a Hugging Face dataset with --hf")
    p.add_argument("file", help="the file; with --hf a dataset name (needs internet) or local dataset directory")
    p.add_argument("--hf", action="store_true", help="FILE names a Hugging Face dataset, e.g. "
                   "TechWolf/Synthetic-ESCO-skill-sentences (needs the datasets extra)")
    p.add_argument("--split", default="train", help="with --hf: the split (default train)")
    p.add_argument("--text-column", default="sentence", help="with --hf: the sentence column (default sentence)")
    p.add_argument("--skill-column", default="skill", help="with --hf: the skill column, ids or preferred labels "
                   "(default skill)")
    p.add_argument("--source", help="source recorded for rows without one (default: import:FILENAME)")
    p.add_argument("--no-progress", action="store_true")
    p = curation(msub, "export", "write the tenant's own sentences to JSONL (or CSV by suffix)")
    p.add_argument("file")
    p.add_argument("--skill")

    sk = sub.add_parser("skill", help="curate skills: add, update, retire, list")
    ssub = sk.add_subparsers(dest="action", required=True)
    p = curation(ssub, "add", "add a skill the taxonomy lacks")
    p.add_argument("--id", required=True, dest="skill_id")
    p.add_argument("--label", required=True)
    p.add_argument("--description", default="")
    p = curation(ssub, "update", "change a skill's label or description (a new label re-encodes that skill)")
    p.add_argument("skill", help="skill id or exact preferred label")
    p.add_argument("--label")
    p.add_argument("--description")
    p = curation(ssub, "retire", "never return a skill again (a tenant hides a global skill for itself)")
    p.add_argument("skill")
    p = curation(ssub, "list", "skills visible to the tenant")
    p.add_argument("--own", action="store_true", help="only the tenant's own skills")
    p.add_argument("--json", action="store_true")

    te = sub.add_parser("tenant", help="list or delete tenants")
    tsub = te.add_subparsers(dest="action", required=True)
    p = tsub.add_parser("list", parents=[common], help="tenants and their own point counts")
    p.add_argument("--json", action="store_true")
    p = tsub.add_parser("delete", parents=[common], help="remove exactly this tenant's data")
    p.add_argument("tenant")

    tu = sub.add_parser("tune", parents=[common], help="choose lam, k, tau on validation files; save them as the "
                        "store's defaults")
    tu.add_argument("files", nargs="+", metavar="FILE", help="validation files (never a test split)")
    tu.add_argument("--check", action="append", default=[], metavar="FILE",
                    help="also report this file at every point, outside the objective (e.g. skillskape-dev)")
    tu.add_argument("--dry-run", action="store_true", help="show the best settings, save nothing")
    tu.add_argument("--package-defaults", action="store_true",
                    help="save them as the shipped defaults for this model (maintainers), not in the store")
    tu.add_argument("--show", type=int, default=10, help="grid points to print (default 10)")
    tu.add_argument("--exact", action="store_true", help="exact search instead of HNSW")

    mg = sub.add_parser("migrate", parents=[common], help="apply pending schema migrations; change model; roll back")
    mg.add_argument("--dry-run", action="store_true", help="list what would be done, do nothing")
    mg.add_argument("--model", help="re-embed everything with this model into new collections and swap to them")
    mg.add_argument("--rollback", action="store_true", help="swap back to the collections served before the last "
                    "re-embedding")
    mg.add_argument("--no-progress", action="store_true")

    stp = sub.add_parser("status", parents=[common], help="backend, collections and counts, model, schema version")
    stp.add_argument("--json", action="store_true", help="one JSON object")

    be = sub.add_parser("bench", parents=[common], help="measure throughput and Qdrant overhead; prints a table")
    be.add_argument("--sentences", type=int, default=512, help="how many SkillSkape dev sentences (default 512)")
    be.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default 3)")
    be.add_argument("--batch-size", type=int, default=256, help="sentences per map call (default 256, as `map`)")
    be.add_argument("--json", action="store_true", help="print one JSON object")

    return parser


def _open_kwargs(args: argparse.Namespace) -> dict:
    return dict(url=args.url, api_key=args.api_key, prefix=args.prefix, timeout=args.timeout,
                prefer_grpc=args.grpc or None)


def _shipped_sources(value: str | None) -> tuple[str, ...]:
    """A comma-separated list of shipped memory sources (None: the default ones), checked."""
    from ._data import DEFAULT_MEMORY_SOURCES, MEMORY_SOURCES

    sources = tuple(value.split(",")) if value else DEFAULT_MEMORY_SOURCES
    unknown = set(sources) - set(MEMORY_SOURCES)
    if unknown:
        raise InvalidInputError(f"unknown memory sources {sorted(unknown)}; known: {', '.join(MEMORY_SOURCES)}")
    return sources


def _cmd_build(args: argparse.Namespace) -> int:
    from ._build import build_store
    from ._config import open_store
    from ._data import load_taxonomy
    from ._encoder import Encoder

    sources = _shipped_sources(args.memory_sources)
    skills = load_taxonomy(args.taxonomy)  # read before anything is touched: a bad file changes nothing
    store = open_store(args.store, create=True, **_open_kwargs(args))
    with store:
        if args.force:
            store.drop()
        progress = not args.no_progress
        if progress:
            print(f"building {store.describe()} ({len(skills)} skills) ...", file=sys.stderr, flush=True)
        model = args.model
        if model is None and store.exists():
            # Finishing or topping up a store keeps the model it was built with, whatever the default is now.
            model = store.manifest.model
        encoder = Encoder(model)
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


def _cmd_map_postings(args: argparse.Namespace) -> int:
    from ._config import locate
    from ._mapper import SkillMapper
    from ._postings import LocalRunner, map_postings

    if args.top < 1 or args.sentence_top < 1:
        raise InvalidInputError("--top and --sentence-top must be >= 1")
    if args.ray:
        from ._distributed import RayRunner

        url, directory = locate(args.store, args.url)
        where = {**_open_kwargs(args), "url": url, "path": str(directory) if directory else None}
        runner = RayRunner(args.ray, args.ray_actors, where, args.top, args.sentence_top, args.tenant)
    else:
        mapper = SkillMapper.open(args.store, **_open_kwargs(args))
        runner = LocalRunner(mapper, args.top, args.sentence_top, args.tenant)
    try:
        report = map_postings(
            runner, args.source, args.out, id_field=args.id_field, text_field=args.text_field,
            progress=not args.no_progress,
            on_malformed=lambda message: print(f"skipped: {message}", file=sys.stderr),
        )
    finally:
        runner.close()
        if not args.ray:
            mapper.close()
    print(f"wrote {report.written} postings ({report.sentences} sentences) to {args.out}; "
          f"{report.skipped_already_done} already there; {len(report.malformed)} malformed skipped")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ._evaluate import format_report, run_eval, to_json
    from ._mapper import MODES, SkillMapper

    modes = MODES if args.mode == "all" else (args.mode,)
    sources = args.memory_sources.split(",") if args.memory_sources else None
    with SkillMapper.open(args.store, exact=args.exact, memory_sources=sources, **_open_kwargs(args)) as mapper:
        for path in args.files:
            report = run_eval(mapper, path, modes, depth=args.depth)
            print(to_json(report) if args.json else format_report(path, report), flush=True)
    return 0


def _curator(args: argparse.Namespace):
    from ._config import open_store
    from ._curation import Curator

    store = open_store(args.store, **_open_kwargs(args))
    try:
        return Curator(store, user=getattr(args, "user", None))
    except BaseException:
        store.close()
        raise


def _cmd_memory(args: argparse.Namespace) -> int:
    curator = _curator(args)
    with curator.store:
        t = args.tenant
        if args.action == "add":
            added = curator.add_sentence(args.text, args.skill, tenant=t, source=args.source)
            print("added" if added else "already stored")
        elif args.action == "remove":
            print(curator.remove_sentence(args.text, args.skill, tenant=t))
        elif args.action == "relabel":
            curator.relabel(args.text, args.skill, args.to, tenant=t)
            print("relabelled")
        elif args.action == "list":
            for p in curator.list_memory(args.skill, tenant=t, own_only=args.own):
                if args.json:
                    print(json.dumps(p, ensure_ascii=False))
                else:
                    print(f"{p.get('skill_id')}\t{p.get('tenant')}\t{p.get('source')}\t{p.get('created_by', '')}\t"
                          f"{p.get('created_at', '')}\t{p.get('text')}")
        elif args.action == "import":
            if args.hf:
                report = curator.import_hf(args.file, split=args.split, text_column=args.text_column,
                                           skill_column=args.skill_column, tenant=t, source=args.source,
                                           progress=not args.no_progress)
            else:
                report = curator.import_file(args.file, tenant=t, source=args.source, progress=not args.no_progress)
            for error in report.errors:
                print(error, file=sys.stderr)
            print(f"stored {report.stored}, already stored {report.already_stored}, bad rows {len(report.errors)}")
            return 1 if report.errors else 0
        elif args.action == "export":
            print(f"wrote {curator.export(args.file, tenant=t, skill=args.skill)} sentences to {args.file}")
    return 0


def _cmd_skill(args: argparse.Namespace) -> int:
    curator = _curator(args)
    with curator.store:
        t = args.tenant
        if args.action == "add":
            curator.add_skill(args.skill_id, args.label, description=args.description, tenant=t)
            print(f"added {args.skill_id}")
        elif args.action == "update":
            curator.update_skill(args.skill, label=args.label, description=args.description, tenant=t)
            print("updated")
        elif args.action == "retire":
            print(curator.retire_skill(args.skill, tenant=t))
        elif args.action == "list":
            for p in curator.list_skills(tenant=t, own_only=args.own):
                if args.json:
                    print(json.dumps(p, ensure_ascii=False))
                else:
                    print(f"{p['skill_id']}\t{p['tenant']}\t{p['label']}")
    return 0


def _cmd_tenant(args: argparse.Namespace) -> int:
    curator = _curator(args)
    with curator.store:
        if args.action == "list":
            tenants = curator.tenants()
            if args.json:
                print(json.dumps(tenants))
            else:
                for name, counts in tenants.items():
                    print(f"{name}\tskills {counts['skills']}\tmemory {counts['memory']}\thidden {counts['hidden']}")
        else:
            curator.delete_tenant(args.tenant)
            print(f"deleted tenant {args.tenant}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from ._mapper import SkillMapper
    from ._tuning import save_package_defaults, save_params, tune

    with SkillMapper.open(args.store, exact=args.exact, **_open_kwargs(args)) as mapper:
        default = mapper.params
        rows = tune(mapper, args.files, checks=args.check)
        names = [str(f) for f in [*args.files, *args.check]]
        print(f"{'lam':>4} {'k':>4} {'tau':>5} {'agg':<8} " + "  ".join(f"{Path(n).name[:22]:>22}" for n in names)
              + "  objective")
        print(f"{'':>24}" + "  ".join(f"{'RP@5 / RP@10 / MRR':>22}" for _ in names))
        for r in rows[: args.show]:
            cells = "  ".join(f"{100 * r[n]['rp@5']:6.1f} /{100 * r[n]['rp@10']:5.1f} /{100 * r[n]['mrr']:5.1f}"
                              for n in names)
            print(f"{r['lam']:>4} {r['k']:>4} {r['tau']:>5} {r['aggregation']:<8} {cells}  {100 * r['objective']:.1f}")
        best = rows[0]
        before = next((r for r in rows if (r["lam"], r["k"], r["tau"], r["aggregation"]) ==
                       (default.lam, default.k, default.tau, default.aggregation)), None)
        if before is not None:
            print(f"current defaults (lam {default.lam}, k {default.k}, tau {default.tau}): objective "
                  f"{100 * before['objective']:.1f}")
        if args.package_defaults and not args.dry_run:
            path = save_package_defaults(mapper, best, args.files)
            print(f"saved lam {best['lam']}, k {best['k']}, tau {best['tau']}, {best['aggregation']} for "
                  f"{mapper.encoder.name} in {path}")
        elif not args.dry_run:
            save_params(mapper, best, args.files)
            print(f"saved lam {best['lam']}, k {best['k']}, tau {best['tau']}, {best['aggregation']} as the defaults "
                  f"of {mapper.store.describe()}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from ._encoder import BASE_MODEL
    from ._finetune import Recipe, finetune

    if args.pairs < args.batch_size:
        raise InvalidInputError(f"--pairs ({args.pairs}) must be at least --batch-size ({args.batch_size})")
    sources = _shipped_sources(args.memory_sources)
    recipe = Recipe(base=args.base or BASE_MODEL, memory_sources=sources, pairs=args.pairs, epochs=args.epochs,
                    batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed)
    out = finetune(args.out, recipe, progress=not args.no_progress)
    print(f"fine-tuned model saved in {out}; build a store with it: knnbe-qdrant --store DIR build --model {out}")
    return 0


def _cmd_unseen(args: argparse.Namespace) -> int:
    from ._evaluate import format_report
    from ._mapper import SkillMapper
    from ._unseen import unseen_skills

    with SkillMapper.open(args.store, exact=args.exact, **_open_kwargs(args)) as mapper:
        r = unseen_skills(mapper, args.files, fraction=args.fraction, seed=args.seed, backup=args.backup)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['skills']} skills, {r['memory_points']} memory points taken out; {r['sentences']} sentences name "
          "one of those skills")
    print(format_report("memory of those skills removed", r["before"]))
    print(format_report("the same points upserted back (nothing re-encoded, no retraining)", r["after"]))
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from . import migrations
    from ._config import open_store
    from ._encoder import Encoder

    with open_store(args.store, **_open_kwargs(args)) as store:
        verb = "would do" if args.dry_run else "done"
        if args.rollback:
            steps = migrations.rollback(store, dry_run=args.dry_run)
        else:
            steps = migrations.migrate(store, dry_run=args.dry_run)
            if args.model:
                steps += migrations.reembed(store, Encoder(args.model), dry_run=args.dry_run,
                                            progress=not args.no_progress)
        for step in steps:
            print(f"{verb}: {step}")
        if not steps:
            print(f"nothing to do: {store.describe()} is at schema version {store.manifest.schema_version}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from ._config import open_store

    with open_store(args.store, **_open_kwargs(args)) as store:
        report = store.status()
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            if key == "collections":
                for name, n in value.items():
                    print(f"{'collection ' + name:<22} {n} points")
            else:
                print(f"{key:<22} {value}")
    return 0


COMMANDS = {
    "status": _cmd_status,
    "migrate": _cmd_migrate,
    "tune": _cmd_tune,
    "finetune": _cmd_finetune,
    "unseen": _cmd_unseen,
    "map-postings": _cmd_map_postings,
    "build": _cmd_build, "map": _cmd_map, "eval": _cmd_eval, "bench": _cmd_bench,
    "memory": _cmd_memory, "skill": _cmd_skill, "tenant": _cmd_tenant,
}


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
