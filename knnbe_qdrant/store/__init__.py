"""The only code that talks to Qdrant: one interface (`base.Store`), an embedded backend (Qdrant Edge) and a
qdrant-client backend (a server, or qdrant-client's local mode), and the `Connection` that says which one.

This package depends on nothing of knnbe-qdrant but the schema and the errors.
"""

from typing import Any

from .base import Hit, Record, Store, Where
from .connection import Connection, Location, as_connection, default_store_path, open_store
from .edge import EdgeStore

__all__ = [
    "Connection",
    "EdgeStore",
    "Hit",
    "Location",
    "QdrantClientStore",
    "Record",
    "Store",
    "Where",
    "as_connection",
    "default_store_path",
    "open_store",
]


def __getattr__(name: str) -> Any:
    # qdrant-client takes most of a second to import: only users of a server (or local mode) pay for it.
    if name == "QdrantClientStore":
        from .client import QdrantClientStore

        return QdrantClientStore
    raise AttributeError(name)
