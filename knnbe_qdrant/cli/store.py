"""Commands that make or look after a store: build, migrate, backup, restore, status."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._data import DEFAULT_MEMORY_SOURCES, MEMORY_SOURCES
from .._errors import InvalidInputError
from ..store.base import Store
from ._common import connection, index_new_points, shipped_sources


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    b = sub.add_parser("build", parents=[parent], help="build (or finish building) the store from ESCO and the memory")
    b.add_argument("--model", help="sentence-transformers model name or path (default: the shipped fine-tuned "
                   "knnbe-qdrant/all-MiniLM-L6-v2-esco; sentence-transformers/all-MiniLM-L6-v2 is the plain one)")
    b.add_argument("--taxonomy", metavar="FILE", help="JSONL of skills (id, label, alt_labels, description) "
                   "instead of the shipped ESCO v1.1.0")
    b.add_argument("--memory-sources", default=None, metavar="LIST",
                   help=f"comma-separated shipped memory sources (default: {','.join(DEFAULT_MEMORY_SOURCES)}; "
                   f"{', '.join(s for s in MEMORY_SOURCES if s not in DEFAULT_MEMORY_SOURCES)} is the other one)")
    b.add_argument("--skill-text", default="label", choices=["label", "label_description"],
                   help="what text embeds each skill (default: label)")
    b.add_argument("--force", action="store_true", help="rebuild from scratch: the new store is built beside the "
                   "old one, which serves until the new one is complete and replaces it atomically; every tenant's "
                   "skills and sentences, hide marks and curator edits are carried over, re-encoded")
    b.add_argument("--discard-edits", action="store_true", help="with --force: do not carry the curated data over "
                   "(every tenant's skills and sentences, hide marks and curator edits are lost)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.set_defaults(func=build)

    mg = sub.add_parser("migrate", parents=[parent], help="apply pending schema migrations; change model; roll back")
    mg.add_argument("--dry-run", action="store_true", help="list what would be done, do nothing")
    mg.add_argument("--model", help="re-embed everything with this model into new collections and swap to them")
    mg.add_argument("--rollback", action="store_true", help="swap back to the collections served before the last "
                    "re-embedding")
    mg.add_argument("--discard-edits", action="store_true", help="with --rollback: roll back even though skills or "
                    "sentences were edited since the swap (those edits are lost)")
    mg.add_argument("--no-progress", action="store_true")
    mg.set_defaults(func=migrate)

    bk = sub.add_parser("backup", parents=[parent], help="write the whole store (curated data, keys and audit log "
                        "included) to a new folder")
    bk.add_argument("folder", help="the backup folder to create")
    bk.set_defaults(func=backup)

    rs = sub.add_parser("restore", parents=[parent], help="load a backup made by `backup` (checksums checked first)")
    rs.add_argument("folder", help="the backup folder")
    rs.add_argument("--force", action="store_true", help="replace the existing store: the backup is loaded beside it "
                    "and swapped in atomically")
    rs.set_defaults(func=restore)

    ix = sub.add_parser("index", parents=[parent], help="index the points curators added since the store was last "
                        "indexed (embedded store: `serve` cannot while it answers; a server indexes by itself)")
    ix.set_defaults(func=index)

    st = sub.add_parser("status", parents=[parent], help="backend, collections and counts, model, schema version")
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.set_defaults(func=status)


def build(args: argparse.Namespace) -> int:
    from .._build import build_store, rebuild_store
    from .._data import load_taxonomy
    from ..encoding import Encoder

    # Every argument is checked before the store is touched: a bad file or a mistyped model changes nothing.
    sources = shipped_sources(args.memory_sources)
    skills = load_taxonomy(args.taxonomy)
    with connection(args).open(create=True) as store:
        model = args.model
        if model is None and store.exists() and not args.force:
            # Finishing or topping up a store keeps the model it was built with, whatever the default is now.
            model = store.manifest.model
        encoder = Encoder(model, precision="fp32")  # stored vectors: full precision
        progress = not args.no_progress
        if progress:
            print(f"building {store.describe()} ({len(skills)} skills) ...", file=sys.stderr, flush=True)
        if args.discard_edits and not args.force:
            raise InvalidInputError("--discard-edits goes with --force")
        build = {"skills": skills, "memory_sources": sources, "skill_text": args.skill_text, "progress": progress}
        if args.force:
            from .._carry import carry_edits

            def carry(old: Store, new: Store) -> None:
                print(carry_edits(old, new, encoder, progress=progress).summary(), file=sys.stderr, flush=True)

            manifest = rebuild_store(store, encoder, carry=None if args.discard_edits else carry, **build)
        else:
            manifest = build_store(store, encoder, **build)
    print(f"store ready: {store.describe()}, model {manifest.model} ({manifest.dimension}-d), "
          f"{manifest.counts.get('skills', 0)} skills, {manifest.counts.get('memory', 0)} memory sentences, "
          f"built in {manifest.build_seconds} s")
    return 0


def migrate(args: argparse.Namespace) -> int:
    from .. import migrations
    from ..migrations.reembed import reembed, rollback

    with connection(args).open() as store:
        verb = "would do" if args.dry_run else "done"
        if args.rollback:
            steps = rollback(store, dry_run=args.dry_run, discard_edits=args.discard_edits)
        else:
            steps = migrations.migrate(store, dry_run=args.dry_run)
            if args.model:
                from ..encoding import Encoder

                steps += reembed(store, Encoder(args.model, precision="fp32"), dry_run=args.dry_run,
                                 progress=not args.no_progress)
        for step in steps:
            print(f"{verb}: {step}")
        if not steps:
            print(f"nothing to do: {store.describe()} is at schema version {store.manifest.schema_version}")
    return 0


def backup(args: argparse.Namespace) -> int:
    from ..store.backup import backup as write_backup

    with connection(args).open() as store:
        counts = write_backup(store, args.folder)
    print(f"backed up {store.describe()} to {args.folder}: {counts.get('skills', 0)} skills, "
          f"{counts.get('memory', 0)} memory sentences, keys and audit log")
    return 0


def restore(args: argparse.Namespace) -> int:
    from ..store.backup import read_index
    from ..store.backup import restore as load_backup

    read_index(args.folder)  # a damaged or foreign backup is refused before the store is opened
    with connection(args).open(create=True) as store:
        manifest = load_backup(store, args.folder, force=args.force)
    print(f"restored {store.describe()} from {args.folder}: {manifest.counts.get('skills', 0)} skills, "
          f"{manifest.counts.get('memory', 0)} memory sentences")
    return 0


def index(args: argparse.Namespace) -> int:
    with connection(args).open() as store:
        left = index_new_points(store)
    if left is None:
        print("a server indexes by itself")
    elif left:
        print(f"{left} points left unindexed (collections under Qdrant's indexing threshold, searched without an "
              "index at no cost)")
    else:
        print("every point is indexed")
    return 0


def status(args: argparse.Namespace) -> int:
    with connection(args).open() as store:
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
