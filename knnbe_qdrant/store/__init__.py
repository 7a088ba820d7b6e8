"""The only code that talks to Qdrant: one interface, an embedded (Qdrant Edge) and a qdrant-client backend."""

from typing import Any

from .base import Hit, Record, Store, Where
from .edge import EdgeStore

__all__ = ["EdgeStore", "Hit", "QdrantClientStore", "Record", "Store", "Where"]


def __getattr__(name: str) -> Any:
    # qdrant-client takes most of a second to import: only users of a server (or local mode) pay for it.
    if name == "QdrantClientStore":
        from .client import QdrantClientStore

        return QdrantClientStore
    raise AttributeError(name)
