"""What every command shares: where the store is (flags before or after the command), opening the mapper or the
curator from those flags, and checked lists of shipped memory sources."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from .._errors import InvalidInputError
from ..store.connection import Connection

if TYPE_CHECKING:
    from .._curation import Curator
    from .._mapper import SkillMapper
    from ..store.base import Store


def add_store_args(parser: argparse.ArgumentParser, default: Any = None) -> None:
    g = parser.add_argument_group("where the store is (before or after the command)")
    g.add_argument("--store", metavar="PATH", default=default, help="embedded store directory (env KNNBE_STORE; "
                   "default ~/.local/share/knnbe-qdrant/store)")
    g.add_argument("--url", default=default, help="Qdrant server URL instead of the embedded store (env QDRANT_URL)")
    g.add_argument("--api-key", default=default, help="Qdrant API key (env QDRANT_API_KEY)")
    g.add_argument("--prefix", default=default,
                   help="collection name prefix on a server (env KNNBE_PREFIX; default knnbe_)")
    g.add_argument("--timeout", type=int, default=default, help="server request timeout, seconds (env QDRANT_TIMEOUT)")
    g.add_argument("--grpc", action="store_true", default=default if default is not None else False,
                   help="prefer gRPC to REST on a server (env QDRANT_PREFER_GRPC)")


def store_parent() -> argparse.ArgumentParser:
    """The store flags as a parent parser, so they are also accepted after the command. SUPPRESS keeps a value given
    before the command from being reset to None by the subcommand's own default."""
    parent = argparse.ArgumentParser(add_help=False)
    add_store_args(parent, default=argparse.SUPPRESS)
    return parent


def connection(args: argparse.Namespace) -> Connection:
    """The one Connection of this invocation: the flags, completed from the environment."""
    return Connection.resolve(args.store, url=args.url, api_key=args.api_key, prefix=args.prefix,
                              timeout=args.timeout, prefer_grpc=args.grpc or None)


def open_mapper(args: argparse.Namespace, **options: Any) -> SkillMapper:
    from .._mapper import SkillMapper

    return SkillMapper.open(connection(args), **options)


def open_curator(args: argparse.Namespace) -> Curator:
    from .._curation import Curator

    store = connection(args).open()
    try:
        return Curator(store, user=getattr(args, "user", None))
    except BaseException:
        store.close()
        raise


def shipped_sources(value: str | None, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """A comma-separated list of shipped memory sources (None: `default`, else the default memory's), checked."""
    from .._data import DEFAULT_MEMORY_SOURCES, MEMORY_SOURCES

    sources = tuple(s.strip() for s in value.split(",")) if value else (default or DEFAULT_MEMORY_SOURCES)
    unknown = set(sources) - set(MEMORY_SOURCES)
    if unknown:
        raise InvalidInputError(f"unknown memory sources {sorted(unknown)}; known: {', '.join(MEMORY_SOURCES)}")
    return sources


def index_new_points(store: Store) -> int | None:
    """Index what curators added to an embedded store (store.indexing), saying so when there was something to index;
    the points left unindexed (None on a server, which indexes by itself). Edge holds Python's lock while it indexes,
    so this runs where nothing else waits on the process."""
    before = store.unindexed()
    if not before:
        return before
    started = time.perf_counter()
    store.optimize()
    left = store.unindexed() or 0
    if (done := before - left) > 0:
        print(f"indexed {done} points added since the store was last indexed ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)
    return left
